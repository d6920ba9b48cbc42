"""The options node's data: defaults for missing keys, checks on untrusted values, legacy keys."""

from __future__ import annotations

import json

import pytest

from banana_pack.nodes.option_specs import OPTION_SPECS, SPECS_BY_NAME, default_options, resolve_options
from banana_pack.providers.errors import ConfigError


def test_no_options_node_means_every_default():
    assert resolve_options(None) == default_options()
    assert resolve_options({}) == default_options()
    assert default_options()["on_failure"] == "fail" and default_options()["use_cache"] is True


def test_missing_keys_fall_back_and_given_keys_win():
    opts = resolve_options({"temperature": 0.5, "save_to": ""})
    assert opts["temperature"] == 0.5 and opts["save_to"] == ""
    assert opts["size_policy"] == "resize"  # not given: its default


def test_options_are_plain_json():
    opts = resolve_options({"web_search": True})
    assert json.loads(json.dumps(opts)) == opts


def test_unknown_keys_from_a_newer_version_are_ignored():
    opts = resolve_options({"some_future_option": 3, "on_failure": "skip"})
    assert "some_future_option" not in opts and opts["on_failure"] == "skip"


def test_legacy_top_level_values_are_used_and_the_options_node_wins():
    opts = resolve_options({"size_policy": "crop"}, legacy={"size_policy": "pad", "use_cache": False})
    assert opts["size_policy"] == "crop" and opts["use_cache"] is False


@pytest.mark.parametrize(
    "name,value,says",
    [
        ("on_failure", "explode", "one of: fail, skip, flag"),
        ("temperature", 9.0, "from 0 to 2"),
        ("temperature", float("nan"), "a number"),
        ("temperature", "hot", "a number"),
        ("use_cache", "yes", "true or false"),
        ("save_to", "x" * 600, "at most 500"),
        ("system_prompt", 42, "text"),
    ],
)
def test_bad_values_are_refused_with_what_is_accepted(name, value, says):
    with pytest.raises(ConfigError) as info:
        resolve_options({name: value})
    assert says in str(info.value) and name in str(info.value)


def test_a_non_dict_on_the_socket_is_refused():
    with pytest.raises(ConfigError, match="Nano Banana Options"):
        resolve_options(["not", "a", "dict"])


def test_every_spec_has_a_tooltip_and_a_valid_default():
    for spec in OPTION_SPECS:
        assert spec.tooltip.strip()
        assert spec.coerce(spec.default) == spec.default
    assert len(SPECS_BY_NAME) == len(OPTION_SPECS)

