// Pure logic behind the Nano Banana Bridge frontend: the price badge, model choices, the carry-over
// of settings when the model changes, and key status wording. No DOM and no ComfyUI import, so
// tests/js/*.test.mjs run it with node's test runner (`node --test tests/js`), and the pytest suite
// checks the badge against the price in a real run's report.

// "Nano Banana Pro (Gemini 3 Pro Image)" -> "Nano Banana Pro"; a bare name (older workflows) stays.
export function stableModel(choice) {
  return typeof choice === "string" ? choice.split(" (")[0].trim() : "";
}

// How many prompts the node will send: one, or each non-empty line with prompt_per_line on.
export function promptCount(text, perLine) {
  if (!perLine) return 1;
  const lines = String(text ?? "")
    .split(/\r?\n/)
    .filter((line) => line.trim());
  return Math.max(1, lines.length);
}

export function formatAmount(total, unit) {
  // Dollars with two to three decimals, as list prices are quoted ($0.039, $0.134, $1.92).
  if (unit === "usd") return `~$${total.toFixed(3).replace(/(\.\d\d)0$/, "$1")}`;
  return `${Number(total.toFixed(4))} ${unit}`;
}

// Whom "auto" uses: the server's answer for the node's current settings (POST /nano_banana_bridge/auto,
// the run's own check: a conversation, an option or Batch Mode can move it) when it is for this model,
// else the catalog's pick by model alone (before the first answer, or when the route failed).
// Returns {id, reason}: id null with reason "no_key", "unfit" (no keyed provider can run these
// settings) or "invalid" (a setting no provider takes).
export function autoProvider(catalog, model, autoPick) {
  const name = stableModel(model);
  if (autoPick && autoPick.model === name && "provider" in autoPick) return { id: autoPick.provider ?? null, reason: autoPick.provider ? null : autoPick.reason ?? "no_key" };
  const id = catalog?.auto?.[name] ?? null;
  return { id, reason: id ? null : "no_key" };
}

// Which provider runs the call: the chosen one, or for "auto" the one the server picks (autoProvider).
export function effectiveProvider(catalog, providerId, model, autoPick) {
  if (!catalog) return null;
  const id = providerId === "auto" ? autoProvider(catalog, model, autoPick).id : providerId;
  return catalog.providers.find((p) => p.id === id) ?? null;
}

const AUTO_NONE = { no_key: "no key", unfit: "no keyed provider fits", invalid: "invalid setting" };

// What the node asks POST /nano_banana_bridge/auto: only what decides the provider, clipped (the
// server checks it again, as it checks a run). `references`: connected image inputs (a batch counts
// as one here: its size is known only when it runs); `options`: the connected options node's values.
// The seed is left out: no provider refuses one, and "randomize" would ask again after every run.
export function autoQuery({ model, aspectRatio, resolution, count, imageMode, references, conversation, options }) {
  const clipped = options && typeof options === "object" ? Object.fromEntries(Object.entries(options).map(([k, v]) => [k, typeof v === "string" ? v.trim().slice(0, 500) : v])) : null;
  return { model: stableModel(model), aspect_ratio: aspectRatio ?? null, resolution: resolution ?? null, count: Number(count) || 1, image_mode: imageMode ?? null, references: Number(references) || 0, conversation: Boolean(conversation), options: clipped };
}

// Per node, the newest settings' answer: ask(key, query) asks `fetchPick(query)` `delay` ms after the
// last change of `key` (the settings' JSON), once; as with the catalog (createCatalogStore), a slower
// earlier answer never replaces a later one, and a failed one (null) keeps what was shown.
// onAnswer(answer) on each accepted answer.
export function createAutoPicker(fetchPick, onAnswer = () => {}, delay = 250) {
  let asked = null;
  let timer = null;
  let query = null;
  const latest = createCatalogStore(() => fetchPick(query), (answer) => onAnswer(answer));
  return {
    get answer() {
      return latest.data;
    },
    ask(key, next) {
      if (key === asked) return false;
      asked = key;
      query = next; // read when the timer fires: always the last settings asked for
      clearTimeout(timer);
      timer = setTimeout(() => latest.refresh(), delay);
      return true;
    },
    forget() {
      asked = null; // the next ask() asks again (the catalog changed: keys, providers.json)
    },
  };
}

// The badge for the node's current settings:
//   images = prompts x count (x each input image in "each image" mode, which the badge cannot count
//   before the run, so it says "per input image"); price = list price per image at the resolution,
//   the same figure the run's report multiplies by the images that arrive.
//   With delivery "batch" (Google Batch Mode, set on a connected options node) the price is the
//   provider's Batch Mode share of it (half, on Google), as the run's ledger records it.
// Returns {text, level: "ok" | "warn" | "error", images, total, unit}.
export function badgeFor({ catalog, providerId, model, resolution, count, promptText, promptPerLine, imageMode, delivery, autoPick }) {
  if (!catalog) return null;
  const name = stableModel(model);
  const images = promptCount(promptText, promptPerLine) * Math.max(1, Number(count) || 1);
  const perImage = imageMode === "each image";
  const scope = perImage ? ` per input image${images > 1 ? ` (${images} images each)` : ""}` : images > 1 ? ` for ${images} images` : "/image";
  const provider = effectiveProvider(catalog, providerId, name, autoPick);
  if (!provider) {
    const auto = providerId === "auto" ? autoProvider(catalog, name, autoPick) : null;
    const text = auto ? AUTO_NONE[auto.reason] ?? "no key" : catalog.providers.some((p) => p.id === providerId) ? "no key" : `unknown provider ${providerId}`;
    return { text, level: "error", images, total: null, unit: null };
  }
  const offer = provider.models?.[name];
  if (!offer) return { text: `${provider.display_name} does not offer ${name}`, level: "error", images, total: null, unit: null };
  const batch = delivery === "batch";
  if (batch && (provider.batch_discount === undefined || provider.batch_discount === null)) {
    return { text: `${provider.display_name} has no Batch Mode`, level: "error", images, total: null, unit: null };
  }
  const noKey = provider.has_key ? "" : "no key · ";
  // As the server prices a call: the chosen resolution, else the model's default one ("" when fixed).
  const fallback = offer.resolutions?.length ? (offer.resolutions.includes("1K") ? "1K" : offer.resolutions[0]) : "";
  const price = offer.prices?.[offer.resolutions?.length ? (resolution ?? fallback) : ""] ?? offer.prices?.[fallback];
  if (price === undefined || price === null) {
    const what = `${images > 1 ? ` · ${images} images` : ""}${perImage ? " per input image" : ""}`;
    return { text: `${noKey}price unknown${what}`, level: noKey ? "error" : "warn", images, total: null, unit: null };
  }
  const total = price * images * (batch ? provider.batch_discount : 1);
  const mode = batch ? " · Batch Mode" : "";
  return { text: `${noKey}${formatAmount(total, offer.price_unit)}${scope}${mode}`, level: noKey ? "error" : "ok", images, total, unit: offer.price_unit };
}

// Switching model rebuilds its sub-widgets with their defaults. Given the values the old ones held
// ({aspect_ratio: "16:9", resolution: "2K"}) and the new sub-widgets ([{name, options: {values}}]),
// the values to put back: those the new model offers too.
export function carryOver(kept, widgets) {
  const changes = [];
  for (const widget of widgets) {
    const short = String(widget.name ?? "").split(".").pop();
    const value = kept?.[short];
    if (value !== undefined && (widget.options?.values ?? []).includes(value) && widget.value !== value) changes.push({ name: widget.name, value });
  }
  return changes;
}

// The catalog as the frontend knows it (providers, prices, who has a key), fetched again whenever key
// status may have changed (the keys tab saved something, a node's provider changed). The newest
// request wins: a slow earlier answer never overwrites a later one. `fetchCatalog` resolves to the
// route's JSON or null (unreachable server: keep what we had); onChange(data, previous) on each answer.
export function createCatalogStore(fetchCatalog, onChange = () => {}) {
  let data = null;
  let issued = 0;
  let applied = 0;
  let latest = Promise.resolve(null);
  return {
    get data() {
      return data;
    },
    get ready() {
      return latest;
    },
    refresh() {
      const ticket = ++issued;
      latest = Promise.resolve()
        .then(fetchCatalog)
        .catch(() => null)
        .then((answer) => {
          if (answer && ticket > applied) {
            applied = ticket;
            const previous = data;
            data = answer;
            onChange(answer, previous);
          }
          return data;
        });
      return latest;
    },
  };
}

// Before the Nano Banana Options node, the main node saved its advanced settings as its last nine
// widget values, in this order, right after image_mode. Returns them by name when `values` (a saved
// widgets_values) has that old layout, else null.
export const LEGACY_OPTION_ORDER = ["on_failure", "size_policy", "system_prompt", "temperature", "web_search", "upload_format", "use_cache", "save_to", "model_id_override"];

export function legacyOptions(values) {
  if (!Array.isArray(values) || values.length < LEGACY_OPTION_ORDER.length + 9) return null;
  const tail = values.slice(-LEGACY_OPTION_ORDER.length);
  const imageMode = values[values.length - LEGACY_OPTION_ORDER.length - 1];
  if (!["references", "each image"].includes(imageMode) || !["fail", "skip", "flag"].includes(tail[0])) return null;
  return Object.fromEntries(LEGACY_OPTION_ORDER.map((name, i) => [name, tail[i]]));
}

// The provider widget's label: which providers have a key, and whom "auto" uses for the node's
// settings (autoProvider: the server's answer, else by model alone).
export function providerLabel(catalog, providerId, model, autoPick) {
  if (!catalog || !providerId) return providerId ?? "";
  if (providerId === "auto") {
    const { id, reason } = autoProvider(catalog, model, autoPick);
    return id ? `auto → ${id}` : reason === "no_key" ? "auto (no key)" : "auto (none fits)";
  }
  const provider = catalog.providers.find((p) => p.id === providerId);
  return provider && !provider.has_key ? `${providerId} (no key)` : providerId;
}

// Whether two catalogs differ in who has a key (which also decides whom "auto" picks).
export function keyStatusChanged(before, after) {
  const status = (data) => JSON.stringify([data?.providers?.map((p) => [p.id, Boolean(p.has_key)]) ?? null, data?.auto ?? null]);
  return status(before) !== status(after);
}

// "set from BANANA_GOOGLE_API_KEY", "set in keys file", "missing"
export function keyStatusText(status) {
  if (!status) return "unknown";
  if (status.source === "env") return `set from ${status.env_name}`;
  if (status.source === "file") return "set in keys file";
  return "missing";
}
