r"""Keeps API keys out of every string the pack produces.

Every key the pack loads is registered here; `redact` replaces it, in any of the forms it takes
on its way through clients, gateways and proxies, with a fixed marker. Error messages, log
records, progress text, node outputs, reports and sidecars all pass through it, so a key that
reached a provider's error body or a URL still never reaches the user's screen, a log, a file or
/history.

The forms, and why each occurs:
- Each character raw or escaped, independently of its neighbours, since encoders disagree about
  which characters to escape (Python's quote and quote_plus, JavaScript's encodeURIComponent,
  Go's QueryEscape and PathEscape): percent-encoded, in either hex case; JSON-escaped (`\"`,
  `\\`, `\/` as PHP's json_encode writes it, `\u00XX` as Go's encoder writes `<>&`); as a
  Python repr writes it (`\'`: httpcore logs response headers so); HTML-escaped (an error page
  echoing the request URL); and each of those escaped once more (a URL inside another URL's
  query, a JSON error quoted as a string inside a gateway's own JSON). Letters, digits and `-._~`
  are written as themselves by every encoder, so only the other characters have escapes.
- Any letter case: proxies normalise header values, and an error page may shout.
- Base64: a gateway that echoes request headers can echo `Authorization: Basic base64(user:key)`.
  A key's base64 depends on its byte offset modulo 3, so all three alignments are covered, in the
  standard and URL-safe alphabets. Each is found without the characters at its edges, which also
  hold bits of what precedes or follows the key (so it is found after any user name); an edge
  character next to a match is then redacted with it.
- Base64 wrapped over lines: a gateway's debug dump in MIME style (76 columns, CRLF), PEM style (64,
  LF), a folded header, or quoted in JSON with its breaks escaped once or twice. A long key's base64
  fills whole lines that hold neither end of it, so the text is searched once more with every line
  break that follows 8 or more base64 characters taken out.
- Hex: a dump of the request bytes (`6b65`, `6b 65`, `6B:65`, xxd's `6b65 7920`, `\x6b\x65`, `%6B%65`,
  `0x6b 0x65`). Runs of 8 or more printable-ASCII bytes (a key's, whose every byte starts with a
  digit from 2 to 7) are decoded and searched as text, so a hex dump of any form above is found too.

Truncate only after redacting (`clip`): a key cut in half by a [:200] no longer matches. For text
that was cut before it got here (a provider's truncated echo, a model's words), the first or last
8 or more characters of a key, or of one of its base64 alignments, are redacted wherever they
appear, in any of the forms above: keys are random, so such a run does not occur in ordinary text
by chance.

Speed (benchmarks/bench_redaction.py): the text is lower-cased once; str.find looks for the first
and last 8 characters of each key and alignment as written without escapes, or, in text that holds
an escape character (`%`, `\`, `&`), one regex of literal alternatives (no repetition) looks for
them however they are written; each hit is extended by plain comparisons as far as the key goes.
All of it is linear in the text (a hit's extension costs at most the key's length). The wrapped
and hex passes cost a regex scan each that starts from a literal (a line feed) or a rare character
class (a digit 2 to 7); a text without line feeds skips the first, and only hex runs are decoded.
"""

from __future__ import annotations

import base64
import bisect
import json
import logging
import re
import string
import threading
import time
from dataclasses import dataclass
from functools import cache
from itertools import product
from typing import Any, Iterator
from urllib.parse import quote

MARKER = "***"
_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
_MIN_PIECE = 8  # a cut-off piece of a key is redacted from this many characters
_ESCAPE_STARTS = ("%", "\\", "&")  # how every non-raw encoding of a character begins

_HTML = {
    "&": ("&amp;", "&#38;", "&#x26;"),
    "<": ("&lt;", "&#60;", "&#x3c;"),
    ">": ("&gt;", "&#62;", "&#x3e;"),
    '"': ("&quot;", "&#34;", "&#x22;"),
    "'": ("&#39;", "&#x27;", "&apos;"),
}
# Written as themselves by every URL, JSON and HTML encoder (RFC 3986's unreserved characters).
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")  # ASCII only: keeps lengths


def _json_escape(text: str) -> str:
    return json.dumps(text)[1:-1]


def _u_escape(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:  # JSON writes it as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _repr_escape(text: str) -> str:
    """As a Python repr between single quotes writes it."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _escapes(ch: str) -> set[str]:
    """One layer: the ways a URL, a JSON string or an HTML page writes one character."""
    if ch in _UNRESERVED:
        return {ch}
    out = {ch, "".join(f"%{byte:02x}" for byte in ch.encode("utf-8")), _json_escape(ch), _u_escape(ch), *_HTML.get(ch, ())}
    if ch == "/":
        out.add("\\/")
    if ch == "'":
        out.add("\\'")  # a Python repr (httpcore logs header values so) or a JavaScript string
    if ch == " ":
        out.add("+")
    return out


def _lower(text: str) -> str:
    """Lower case with every character kept in place, so positions in it are positions in `text`."""
    lowered = text.lower()
    # A few characters lower to two (U+0130): then only ASCII letters are lowered.
    return lowered if len(lowered) == len(text) else text.translate(_LOWER)


@dataclass(frozen=True, eq=False)  # one per character (cached): compared by identity
class _Char:
    """Every text one character of a key may appear as, lower-cased (text is matched lower-cased).

    All but the character itself (and, in base64, its URL-safe twin) start with an escape character.
    """

    alternatives: tuple[str, ...]  # longest first: a regex tries them in order
    by_first: dict[str, tuple[str, ...]]  # the same, by their first character (extending forwards)
    by_last: dict[str, tuple[str, ...]]  # by their last character (extending backwards)
    regex: str


def _alternation(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else "(?:" + "|".join(texts) + ")"


@cache
def _char(ch: str, base64_alphabet: bool = False) -> _Char:
    chars = {ch}
    if base64_alphabet:  # the URL-safe alphabet writes - and _ for + and /
        chars.add({"+": "-", "/": "_"}.get(ch, ch))
    once = set().union(*(_escapes(c) for c in chars))
    twice = set(once)
    for text in once:
        twice |= {quote(text, safe=""), _json_escape(text), _json_escape(text).replace("/", "\\/"), _repr_escape(text)}
        twice |= {text.replace(c, alt) for c, alts in _HTML.items() if c in text for alt in alts}
    alternatives = tuple(sorted({_lower(t) for t in twice}, key=lambda t: (-len(t), t)))
    by_first: dict[str, tuple[str, ...]] = {}
    by_last: dict[str, tuple[str, ...]] = {}
    for alt in alternatives:
        by_first[alt[0]] = by_first.get(alt[0], ()) + (alt,)
        by_last[alt[-1]] = by_last.get(alt[-1], ()) + (alt,)
    return _Char(alternatives, by_first, by_last, _alternation([re.escape(a) for a in alternatives]))


@dataclass(frozen=True, eq=False)
class _Base:
    """A key, or one alignment of its base64: the characters it is made of."""

    chars: tuple[_Char, ...]
    raw: str  # lower-cased, as written without escapes
    base64: bool = False  # a base64 alignment: the characters beside it hold a few of the key's bits too


_BASE64_CHARS = frozenset(string.ascii_lowercase + string.digits + "+/-_")


def _edge(low: str, at: int, base: _Base) -> int:
    """1 if the character at `at` is a base64 character beside a base64 alignment: it goes with it."""
    return 1 if base.base64 and 0 <= at < len(low) and low[at] in _BASE64_CHARS else 0


def _base64_cores(secret: str) -> list[str]:
    """The secret's base64 at byte offsets 0, 1 and 2, keeping only the characters all of whose bits are the secret's."""
    data = secret.encode("utf-8")
    cores = []
    for offset in range(3):
        text = base64.b64encode(b"\0" * offset + data).decode("ascii")
        first, last = -(-8 * offset // 6), 8 * (offset + len(data)) // 6
        cores.append(text[first:last])
    return cores


def _bases(secret: str) -> list[_Base]:
    bases = [_Base(tuple(_char(ch) for ch in secret), _lower(secret))]
    for core in _base64_cores(secret):
        if len(core) >= _MIN_PIECE:  # a shorter run of base64 could be ordinary text
            bases.append(_Base(tuple(_char(ch, True) for ch in core), core.lower(), base64=True))
    return bases


Piece = tuple[_Char, ...]  # a base's first or last _MIN_PIECE characters
_ESCAPE = re.compile("[" + re.escape("".join(_ESCAPE_STARTS)) + "]")


@dataclass(frozen=True)
class _Finder:
    """Finds any of a set of pieces in lower-cased text, and says whose piece it is."""

    literals: dict[str, tuple[_Base, ...]]  # each piece written without escapes, and its bases
    regex: re.Pattern[str]  # each piece however written
    owners: tuple[tuple[_Base, ...], ...]  # by the regex's group number - 1: the bases of the piece that group marks

    @classmethod
    def of(cls, pieces: dict[Piece, list[_Base]]) -> _Finder:
        # Every top-level alternative of the regex is one literal character followed by the rest,
        # so the regex engine skips through the text on the set of first characters and tries only
        # the pieces that start with the character it stopped on; an empty group after the rest of
        # a piece's first character says which piece matched.
        literals: dict[str, tuple[_Base, ...]] = {}
        by_start: dict[str, list[tuple[str, tuple[_Base, ...]]]] = {}
        for piece, bases in pieces.items():
            for letters in product(*([a for a in c.alternatives if len(a) == 1] for c in piece)):
                literals["".join(letters)] = literals.get("".join(letters), ()) + tuple(bases)
            rest = "".join(c.regex for c in piece[1:])
            ends: dict[str, list[str]] = {}
            for alt in piece[0].alternatives:  # longest first, so each list is too
                ends.setdefault(alt[0], []).append(re.escape(alt[1:]))
            for start, tails in ends.items():
                by_start.setdefault(start, []).append((f"{_alternation(tails) if tails != [''] else ''}(){rest}", tuple(bases)))
        regex = "|".join(re.escape(start) + _alternation([text for text, _ in branches]) for start, branches in by_start.items())
        owners = tuple(bases for branches in by_start.values() for _, bases in branches)  # the groups' order in the regex
        return cls(literals, re.compile(regex), owners)

    def hits(self, low: str) -> Iterator[tuple[int, int, tuple[_Base, ...]]]:
        """(start, end, bases) of each piece in the text."""
        if _ESCAPE.search(low):
            for m in self.regex.finditer(low):
                yield m.start(), m.end(), self.owners[(m.lastindex or 1) - 1]
            return
        for literal, bases in self.literals.items():  # without escapes, str.find outruns the regex
            at = low.find(literal)
            while at != -1:
                yield at, at + len(literal), bases
                at = low.find(literal, at + len(literal))


@dataclass(frozen=True)
class _Matcher:
    heads: _Finder  # each base's first _MIN_PIECE characters (or all of a shorter one)
    tails: _Finder | None  # the last _MIN_PIECE of each longer base


def _matcher(secrets: set[str]) -> _Matcher:
    heads: dict[Piece, list[_Base]] = {}
    tails: dict[Piece, list[_Base]] = {}
    for secret in secrets:
        for base in _bases(secret):
            heads.setdefault(base.chars[:_MIN_PIECE], []).append(base)
            if len(base.chars) > _MIN_PIECE:
                tails.setdefault(base.chars[-_MIN_PIECE:], []).append(base)
    return _Matcher(_Finder.of(heads), _Finder.of(tails) if tails else None)


_lock = threading.Lock()
_secrets: set[str] = set()
_expiry: dict[str, float] = {}  # the secrets that stop being secrets (time.time()): access tokens, signed assertions
_EXPIRY_GRACE = 600.0  # seconds a credential is kept past its expiry (clock skew between here and its issuer)
_state: _Matcher | None = None


def register_secret(value: str | None, expires_at: float | None = None) -> None:
    """Redact `value` from now on; with `expires_at`, until that time (and a grace) has passed.

    An access token or a signed assertion grants nothing once expired, and a Vertex service account
    gets a new pair every hour: kept forever, they grew the search without end (every redaction scans
    for every secret). Expired ones are dropped when the next secret is registered. A value also
    registered without an expiry (a key) is never dropped."""
    global _state
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return
    with _lock:
        now = time.time()
        expired = [old for old, at in _expiry.items() if at + _EXPIRY_GRACE <= now and old != value]
        for old in expired:
            _secrets.discard(old)
            del _expiry[old]
        known = value in _secrets
        if expires_at is None:
            _expiry.pop(value, None)
        elif not known or value in _expiry:
            _expiry[value] = max(expires_at, _expiry.get(value, expires_at))
        if known and not expired:
            return
        _secrets.add(value)
        _state = _matcher(_secrets)


def _forward(low: str, at: int, base: _Base, index: int) -> int:
    """Where the base, from its character `index` on (found at `at`), stops matching the text."""
    if low.startswith(base.raw[index:], at):  # the rest written without escapes
        at += len(base.raw) - index
        return at + _edge(low, at, base)
    chars = base.chars
    while index < len(chars) and at < len(low):
        for alt in chars[index].by_first.get(low[at], ()):
            if low.startswith(alt, at):
                at += len(alt)
                break
        else:
            # A cut through an escape (`%2` of `%2F`): that part goes too.
            return at + max((_common_prefix(alt, low[at : at + len(alt)]) for alt in chars[index].by_first.get(low[at], ())), default=0)
        index += 1
    return at + _edge(low, at, base) if index == len(chars) else at


def _backward(low: str, end: int, base: _Base, index: int) -> int:
    """Where the base, up to its character `index` (found ending at `end`), starts matching the text."""
    if low.endswith(base.raw[:index], 0, end):
        return end - index - _edge(low, end - index - 1, base)
    chars = base.chars
    while index > 0 and end > 0:
        for alt in chars[index - 1].by_last.get(low[end - 1], ()):
            if low.endswith(alt, 0, end):
                end -= len(alt)
                break
        else:
            # A cut through an escape (`2F` of `%2F`): that part goes too.
            return end - max((_common_prefix(alt[::-1], low[max(0, end - len(alt)) : end][::-1]) for alt in chars[index - 1].by_last.get(low[end - 1], ())), default=0)
        index -= 1
    return end - _edge(low, end - 1, base) if index == 0 else end


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _spans(low: str, matcher: _Matcher) -> list[tuple[int, int]]:
    """Where the text holds a key, or the first or last part of one, in any form: (start, end) pairs, possibly overlapping."""
    spans = []
    for start, end, bases in matcher.heads.hits(low):
        spans += [(start - _edge(low, start - 1, base), _forward(low, end, base, min(_MIN_PIECE, len(base.chars)))) for base in bases]
    if matcher.tails is not None:
        for start, end, bases in matcher.tails.hits(low):
            spans += [(_backward(low, start, base, len(base.chars) - _MIN_PIECE), end + _edge(low, end, base)) for base in bases]
    return spans


# A line break inside base64: MIME wraps at 76 columns, PEM at 64, a folded header indents the next
# line, a dump quoted in JSON escapes the break (once or twice). Each regex starts with a literal,
# which the regex engine finds as fast as str.find; _break_start takes in what precedes it.
_LINE_FEEDS = (re.compile(r"\n[ \t]*(?=[a-z0-9+/_-])"), re.compile(r"\\n[ \t]*(?=[a-z0-9+/_-])"))
_BASE64_RUN = re.compile(f"[a-z0-9+/_-]{{{_MIN_PIECE}}}")


def _break_start(low: str, at: int) -> int:
    """Where the line break whose line feed (`\n`, or an escaped `\\n`) is at `at` begins."""
    if low[at] == "\n":
        return at - 1 if at and low[at - 1] == "\r" else at
    at -= low.endswith("\\", 0, at)  # escaped twice: `\\\\n`
    if low.endswith("r", 0, at):
        carriage = at - 2 - low.endswith("\\\\r", 0, at)  # `\\r` or `\\\\r`
        return carriage if low.endswith("\\r", 0, at) else at
    return at


def _unwrapped_spans(low: str, matcher: _Matcher) -> list[tuple[int, int]]:
    """Spans of keys written across line breaks (base64 wrapped over lines), found in the text with
    every break that follows at least _MIN_PIECE base64 characters taken out (a shorter first line
    holds less of a key than a cut piece, which is not redacted either)."""
    if "\n" not in low and "\\n" not in low:  # no line feed, escaped or not
        return []
    breaks = sorted((_break_start(low, m.start()), m.end()) for rx in _LINE_FEEDS for m in rx.finditer(low))
    kept, cuts = [], []  # cuts: (where in the joined text the character after a break lands, characters taken out so far)
    at = removed = 0
    for start, end in breaks:
        if start < at + _MIN_PIECE or not _BASE64_RUN.fullmatch(low, start - _MIN_PIECE, start):
            continue
        kept.append(low[at:start])
        removed += end - start
        at = end
        cuts.append((end - removed, removed))
    if not cuts:
        return []
    kept.append(low[at:])
    joined, starts = "".join(kept), [where for where, _ in cuts]

    def original(index: int) -> int:
        k = bisect.bisect_right(starts, index)
        return index + (cuts[k - 1][1] if k else 0)

    return [(original(start), original(end - 1) + 1) for start, end in _spans(joined, matcher) if end > start]


# Hex: runs of at least _MIN_PIECE bytes of printable ASCII (what keys are made of: 0x20 to 0x7e, so
# each byte's first digit is 2 to 7, which ordinary text seldom holds), each two hex digits, apart by
# nothing, at most two of space, colon, comma, dot or dash, or the next byte's \x, % or 0x: `6b65`,
# `6b 65`, `6B:65`, `\x6b\x65`, `%6B%65`, `0x6b 0x65`, xxd's `6b65 7920`.
_HEX_SEPARATOR = r"(?:\\x|%|\s?0x|[\s:,.-]{0,2})"
_HEX_RUN = re.compile(f"[2-7][0-9a-f](?:{_HEX_SEPARATOR}[2-7][0-9a-f]){{{_MIN_PIECE - 1},}}")
_HEX_BYTE = re.compile(f"([2-7][0-9a-f]){_HEX_SEPARATOR}")
_HEX_DIGITS = re.compile(r"[0-9a-f]+")


def _hex_spans(low: str, matcher: _Matcher) -> list[tuple[int, int]]:
    """Spans of keys in hex dumps: each run decoded (as Latin-1: one character a byte) and searched as text."""
    if not any(digit in low for digit in "234567"):  # six str.find outrun one regex scan of a text without them
        return []
    spans = []
    for run in _HEX_RUN.finditer(low):
        # Bare digits may be read from the wrong one (`32333435` read from its 2nd digit is `23 33 43`): read both ways.
        for shift in (0, 1) if _HEX_DIGITS.fullmatch(low, run.start(), run.end()) else (0,):
            pairs = [pair for pair in _HEX_BYTE.finditer(low, run.start() + shift, run.end())]
            if len(pairs) < _MIN_PIECE:
                continue
            decoded = _lower(bytes(int(pair.group(1), 16) for pair in pairs).decode("latin-1"))
            spans += [(pairs[start].start(), pairs[end - 1].start() + 2) for start, end in _spans(decoded, matcher) if end > start]
    return spans


def redact(text: object) -> str:
    s = text if isinstance(text, str) else str(text)
    matcher = _state
    if matcher is None or not s:
        return s
    low = _lower(s)
    spans = _spans(low, matcher) + _unwrapped_spans(low, matcher) + _hex_spans(low, matcher)
    if not spans:
        return s
    out, kept = [], 0
    for start, end in sorted(spans):
        if end <= kept:
            continue
        if start >= kept:
            out += [s[kept:start], MARKER]
        kept = end
    out.append(s[kept:])
    return "".join(out)


def clip(text: object, limit: int, *, ellipsis: str = "...") -> str:
    """Redact, then shorten to `limit` characters: never the other way round."""
    s = redact(text)
    return s if len(s) <= limit else s[:limit] + ellipsis


def redact_data(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, strings, numbers) with every string redacted."""
    if _state is None:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with keys removed (installed on the pack's and httpx's loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state is not None:
            try:
                message = record.getMessage()
            except Exception:  # a malformed record is the logging module's problem, not ours
                return True
            record.msg, record.args = redact(message), None
            if record.exc_info and not record.exc_text:
                # A handler formats the traceback after every filter ran: format it here, redacted, and
                # leave no exc_info behind for a formatter to print again (its message may echo a key).
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            record.exc_info = None
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
            if record.stack_info:
                record.stack_info = redact(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


_FILTER = RedactingFilter()


def install_log_filter(*logger_names: str) -> None:
    for name in logger_names:
        target = logging.getLogger(name)
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
