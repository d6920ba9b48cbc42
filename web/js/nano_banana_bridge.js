// Nano Banana Bridge frontend: the price badge (what a run will cost, or "no key" / "price unknown"),
// the model list narrowed to what the chosen provider offers, aspect ratio and resolution carried
// over when the model changes, old saved model names mapped to the current labels, and a "Nano
// Banana keys" sidebar tab to set, clear and test keys. Everything here is a convenience: the node
// checks the same things when it runs, with messages that say what to do. The arithmetic lives in
// nbb_logic.js (tested with node --test).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { autoQuery, badgeFor, carryOver, createAutoPicker, createCatalogStore, keyStatusChanged, keyStatusText, legacyOptions, providerLabel, stableModel } from "./nbb_logic.js";

const NODE_ID = "NanoBananaBridge";
const OPTIONS_ID = "NanoBananaOptions";
const SUB_WIDGETS = /^model\.(aspect_ratio|resolution)$/;
const AUTO_ROUTE = "/nano_banana_bridge/auto";
const IMAGE_INPUT = /(^|\.)image_\d+$/;
const AUTO_WATCH_MS = 1000;
const BADGE_COLORS = { ok: ["#dfe8d0", "#2f4a1e"], warn: ["#f3e6c4", "#5a4a1a"], error: ["#f6d6d6", "#6b2222"] };

let shownConfigError = null;
let catalogGeneration = 0; // each catalog answer (keys, providers.json) may change whom "auto" uses: ask again

// The catalog (providers, models, prices, who has a key), refreshed when key status may have changed.
const catalog = createCatalogStore(
  () => api.fetchApi("/nano_banana_bridge/catalog", { cache: "no-store" }).then((r) => (r.ok ? r.json() : null)),
  (data, previous) => {
    // A broken keys.json / providers.json: the node still works with the built-in presets; say what to fix (once).
    if (data?.error && data.error !== shownConfigError) {
      shownConfigError = data.error;
      toast("warn", "Nano Banana Bridge configuration", data.error);
    }
    catalogGeneration++;
    takeDownAnsweredKeyToasts(data);
    if (previous && keyStatusChanged(previous, data)) showKeyStatus();
    app.graph?.setDirtyCanvas?.(true, true);
  }
);
const refreshCatalog = () => catalog.refresh();

function toast(severity, summary, detail) {
  const message = { severity, summary, detail, life: 8000 };
  const t = app.extensionManager?.toast;
  if (t?.add) t.add(message);
  else console.warn(`[Nano Banana Bridge] ${summary}: ${detail}`);
  return message;
}

// "No API key" toasts on screen, with the provider each is about (null: any): once the catalog says the
// key is there (saved in the keys tab, which refreshes it), they go, instead of staying their 8 s.
const keyToasts = new Map();

function keyToast(providerId, summary, detail) {
  const message = toast(providerId ? "warn" : "info", summary, detail);
  keyToasts.set(message, providerId);
  setTimeout(() => keyToasts.delete(message), message.life).unref?.();
}

function takeDownAnsweredKeyToasts(data) {
  for (const [message, providerId] of keyToasts) {
    const answered = providerId ? data.providers.some((p) => p.id === providerId && p.has_key) : data.providers.some((p) => p.has_key);
    if (!answered) continue;
    app.extensionManager?.toast?.remove?.(message);
    keyToasts.delete(message);
  }
}

const widget = (node, name) => node.widgets?.find((w) => w.name === name);
// Frontend 1.43 keeps a widget's options behind a reactive store entry (_state), which the Vue-nodes view
// draws from: a change written through it shows there too (it is the same object the canvas reads).
const reactiveOptions = (w) => w._state?.options ?? w.options;

// Key status is not widget state, so the Vue-nodes view (which redraws a badge or a select's labels only
// when the reactive state they read changes) would keep showing the old one after a key is set or
// cleared. Both read, and showKeyStatus() writes, a mark on the provider widget's reactive value entry
// (frontend 1.43's widget store; without one the canvas redraws by itself anyway).
const keyStatusMark = (node) => widget(node, "provider")?._state?.nbbKeyStatus;

function markChanged(node) {
  const state = widget(node, "provider")?._state;
  if (state) state.nbbKeyStatus = (state.nbbKeyStatus ?? 0) + 1;
}

function showKeyStatus() {
  for (const node of app.graph?.nodes ?? []) if (node.comfyClass === NODE_ID) markChanged(node);
}

// The Nano Banana Options node connected to this node's `options` input (null without one), also
// through Reroute nodes: they pass the link on, so a run gets the options through them too.
function optionsNode(node) {
  const slot = node.inputs?.findIndex((input) => input.name === "options") ?? -1;
  let source = slot >= 0 ? node.getInputNode?.(slot) : null;
  for (let hops = 0; source && (source.comfyClass ?? source.type) === "Reroute" && hops < 64; hops++) source = source.getInputNode?.(0) ?? null;
  return source && (source.comfyClass ?? source.type) === OPTIONS_ID ? source : null;
}

// A setting of the connected options node (undefined without one).
const optionValue = (node, name) => widget(optionsNode(node) ?? {}, name)?.value;

const linked = (input) => input.link !== null && input.link !== undefined;

// Whom "auto" uses for this node's settings, as the server answers (the run's own check: a
// conversation, a thinking level or Batch Mode can move it off the catalog's pick by model alone).
// Asked, debounced, whenever what decides it changes (checked on each draw and every AUTO_WATCH_MS,
// so a change on the options node or a link counts in both views); null until the first answer.
function autoPick(node) {
  if (widget(node, "provider")?.value !== "auto" || !catalog.data) return null;
  node._nbbAutoPicker ??= createAutoPicker(
    (query) => api.fetchApi(AUTO_ROUTE, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(query), cache: "no-store" }).then((r) => (r.ok ? r.json() : null)),
    () => {
      markChanged(node); // the Vue-nodes view redraws the label and the badge
      node.setDirtyCanvas?.(true, true);
    }
  );
  const options = optionsNode(node);
  const query = autoQuery({
    model: widget(node, "model")?.value,
    aspectRatio: widget(node, "model.aspect_ratio")?.value,
    resolution: widget(node, "model.resolution")?.value,
    count: widget(node, "count")?.value,
    imageMode: widget(node, "image_mode")?.value,
    references: (node.inputs ?? []).filter((input) => IMAGE_INPUT.test(input.name ?? "") && linked(input)).length,
    conversation: (node.inputs ?? []).some((input) => input.name === "conversation" && linked(input)),
    options: options ? Object.fromEntries((options.widgets ?? []).filter((w) => w.name).map((w) => [w.name, w.value])) : null,
  });
  node._nbbAutoPicker.ask(`${catalogGeneration}|${JSON.stringify(query)}`, query);
  return node._nbbAutoPicker.answer;
}

function badgeState(node) {
  keyStatusMark(node);
  return badgeFor({
    delivery: optionValue(node, "delivery"),
    catalog: catalog.data,
    providerId: widget(node, "provider")?.value,
    model: widget(node, "model")?.value,
    resolution: widget(node, "model.resolution")?.value,
    count: widget(node, "count")?.value,
    promptText: widget(node, "prompt")?.value,
    promptPerLine: widget(node, "prompt_per_line")?.value,
    imageMode: widget(node, "image_mode")?.value,
    autoPick: autoPick(node),
  });
}

// Narrow the model list to the provider's offers (never switch the model for the user: that would
// reset its settings; the badge says when the provider does not offer it).
async function applyProvider(node, providerId, announce) {
  const data = announce ? await refreshCatalog() : catalog.data ?? (await catalog.ready);
  const modelWidget = widget(node, "model");
  if (!data || !modelWidget?.options?.values) return;
  if (!modelWidget._nbbAllModels) modelWidget._nbbAllModels = [...modelWidget.options.values];
  const provider = data.providers.find((p) => p.id === providerId);
  const allowed = provider ? modelWidget._nbbAllModels.filter((m) => stableModel(m) in provider.models) : modelWidget._nbbAllModels;
  if (allowed.length) reactiveOptions(modelWidget).values = allowed;
  if (announce && provider && !provider.has_key) {
    keyToast(provider.id, `No API key for ${provider.display_name}`, `Set it in the "Nano Banana keys" tab (key icon in the sidebar), or set ${provider.key_env.join(" or ")} before starting ComfyUI.`);
  }
  node.setDirtyCanvas?.(true, true);
}

// The model widget rebuilds its sub-widgets in its value setter (both views); each removed
// sub-widget reports its last value through onRemove, and the change callback puts back the
// values the new model also offers.
function watchModel(node) {
  const modelWidget = widget(node, "model");
  if (!modelWidget || modelWidget._nbbWatched) return;
  modelWidget._nbbWatched = true;
  const kept = {};
  const arm = () => {
    for (const w of node.widgets.filter((w) => SUB_WIDGETS.test(w.name || ""))) {
      if (w._nbbArmed) continue;
      w._nbbArmed = true;
      const previous = w.onRemove;
      w.onRemove = function (...args) {
        kept[w.name.split(".").pop()] = w.value;
        return previous?.apply(this, args);
      };
    }
  };
  arm();
  const original = modelWidget.callback;
  modelWidget.callback = function (value, ...rest) {
    const result = original?.call(this, value, ...rest);
    const subs = node.widgets.filter((w) => SUB_WIDGETS.test(w.name || ""));
    for (const change of carryOver(kept, subs)) {
      const target = widget(node, change.name);
      target.value = change.value;
      target.callback?.(change.value);
    }
    arm();
    syncModelState(node);
    node.setDirtyCanvas?.(true, true);
    return result;
  };
}

// Frontend 1.43's DynamicCombo keeps its value in a closure (its own value property), so the
// Vue-nodes view, which draws from the widget's store state, shows the default model after a
// workflow loads (core DynamicCombo nodes show the same). Copy the value into that state.
function syncModelState(node) {
  const modelWidget = widget(node, "model");
  const state = modelWidget?._state;
  if (state && "value" in state && state.value !== modelWidget.value) state.value = modelWidget.value;
}

function addBadge(node) {
  const Badge = window.LGraphBadge;
  if (!Badge || !Array.isArray(node.badges)) return;
  let cached = { key: null, badge: null };
  node.badges.push(() => {
    const state = badgeState(node);
    const key = state ? `${state.level}|${state.text}` : "";
    if (key !== cached.key) {
      const [fgColor, bgColor] = BADGE_COLORS[state?.level] ?? BADGE_COLORS.ok;
      cached = { key, badge: state ? new Badge({ text: state.text, fgColor, bgColor }) : new Badge({ text: "" }) };
    }
    return cached.badge;
  });
}

// ---- keys sidebar tab ---------------------------------------------------------------------

async function postJson(path, body) {
  const response = await api.fetchApi(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  let data = {};
  try {
    data = await response.json();
  } catch {
    /* not JSON */
  }
  return { ok: response.ok, data };
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

async function renderKeysTab(root) {
  root.replaceChildren(el("div", { textContent: "Loading…", style: "padding:12px" }));
  const response = await api.fetchApi("/nano_banana_bridge/keys", { cache: "no-store" }).catch(() => null);
  const status = response?.ok ? await response.json() : null;
  if (!status) {
    root.replaceChildren(el("div", { textContent: "Could not read key status from the server.", style: "padding:12px" }));
    return;
  }
  const wrap = el("div", { className: "nbb-keys", style: "padding:10px 12px;display:flex;flex-direction:column;gap:10px;font-size:13px;overflow:auto;height:100%" });
  wrap.append(
    el("div", { style: "opacity:.8;line-height:1.4" }, `Keys are written to ${status.keys_file} (readable only by you), never to the workflow or ComfyUI's settings. Environment variables take precedence. Keys are never shown again once saved.`)
  );
  if (status.error) wrap.append(el("div", { textContent: status.error, style: "color:#f0a0a0;white-space:pre-wrap" }));
  for (const owner of status.owners) {
    const names = owner.providers.map((p) => p.display_name).join(", ");
    const state = el("span", { textContent: keyStatusText(owner), style: `font-weight:600;color:${owner.source ? "#7fc97f" : "#e07a7a"}` });
    const input = el("input", { type: "password", placeholder: owner.source === "file" ? "replace the saved key" : "paste a key", autocomplete: "off", style: "flex:1;min-width:0;padding:4px 6px;background:var(--comfy-input-bg);color:var(--input-text);border:1px solid var(--border-color);border-radius:4px" });
    input.dataset.owner = owner.owner;
    const answer = el("div", { className: "nbb-answer", style: "white-space:pre-wrap;word-break:break-word;font-size:12px;opacity:.9" });
    const button = (label, onClick) => el("button", { textContent: label, className: `nbb-${label.toLowerCase()}`, onclick: onClick, style: "padding:3px 8px;border-radius:4px;border:1px solid var(--border-color);background:var(--comfy-menu-bg);color:var(--fg-color);cursor:pointer" });
    const save = async (key) => {
      const { ok, data } = await postJson("/nano_banana_bridge/keys", { provider: owner.owner, key });
      input.value = "";
      await refreshCatalog();
      await renderKeysTab(root);
      const fresh = root.querySelector(`[data-owner="${owner.owner}"]`)?.closest(".nbb-owner")?.querySelector(".nbb-answer");
      if (fresh) fresh.textContent = ok ? data.message : `Not saved: ${data.error ?? "error"}`;
    };
    const testButtons = owner.providers
      .filter((p, i, all) => all.findIndex((q) => q.family === p.family) === i)
      .map((p) =>
        button(owner.providers.length > 1 ? `Test ${p.id}` : "Test", async () => {
          answer.textContent = `Testing ${p.display_name}…`;
          const { ok, data } = await postJson("/nano_banana_bridge/keys/test", { provider: p.id });
          answer.textContent = ok ? `${data.ok ? "✔" : data.ok === false ? "✘" : "?"} ${p.display_name}: ${data.answer}` : `Test refused: ${data.error}`;
          answer.style.color = data.ok ? "#9fd89f" : data.ok === false ? "#f0a0a0" : "";
        })
      );
    testButtons.forEach((b) => (b.className = "nbb-test"));
    wrap.append(
      el(
        "div",
        { className: "nbb-owner", style: "border:1px solid var(--border-color);border-radius:6px;padding:8px;display:flex;flex-direction:column;gap:6px" },
        el("div", { style: "display:flex;justify-content:space-between;gap:8px" }, el("span", { textContent: `${owner.owner}`, style: "font-weight:600" }), state),
        el("div", { textContent: names, style: "font-size:12px;opacity:.75" }),
        el("div", { style: "display:flex;gap:6px;align-items:center" }, input, button("Save", () => input.value.trim() && save(input.value.trim())), button("Clear", () => save(""))),
        el("div", { style: "display:flex;gap:6px;flex-wrap:wrap;align-items:center" }, ...testButtons, el("span", { textContent: owner.key_help ? `Get a key: ${owner.key_help}` : "", style: "font-size:11px;opacity:.6" })),
        answer
      )
    );
  }
  root.replaceChildren(wrap);
}

app.registerExtension({
  name: "nano_banana_bridge.provider_models",
  async setup() {
    const data = await refreshCatalog();
    app.extensionManager?.registerSidebarTab?.({
      id: "nano-banana-keys",
      icon: "pi pi-key",
      title: "Nano Banana keys",
      tooltip: "Nano Banana Bridge: API keys",
      type: "custom",
      render: (root) => renderKeysTab(root),
    });
    // Settings the draws do not see change (the Vue-nodes view draws only what changed): look for them.
    const watch = setInterval(() => {
      for (const node of app.graph?.nodes ?? []) if (node.comfyClass === NODE_ID) autoPick(node);
    }, AUTO_WATCH_MS);
    watch?.unref?.(); // (node's test runner: let the process end)
    if (data && !data.providers.some((p) => p.has_key)) {
      keyToast(null, "Nano Banana Bridge: no API key yet", 'Add one in the "Nano Banana keys" tab (key icon in the sidebar); it is saved in a file only you can read.');
    }
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_ID) return;
    // Workflows saved before the labels hold "Nano Banana Pro": map it to its label before the
    // model widget sees it (an unknown value would drop its aspect ratio and resolution).
    const labels = (nodeData.input?.required?.model?.[1]?.options ?? []).map((o) => o.key);
    const configure = nodeType.prototype.configure;
    nodeType.prototype.configure = function (info, ...rest) {
      const values = info?.widgets_values;
      this._nbbLegacyOptions = legacyOptions(values);
      if (Array.isArray(values)) {
        const index = values.findIndex((v, i) => i <= 3 && typeof v === "string" && !labels.includes(v) && labels.some((l) => stableModel(l) === v));
        if (index >= 0) values[index] = labels.find((l) => stableModel(l) === values[index]);
      }
      const result = configure.call(this, info, ...rest);
      syncModelState(this);
      return result;
    };
  },
  // A workflow saved before the options node: put its advanced settings on a new Nano Banana
  // Options node connected to this one (only when they differ from the defaults).
  loadedGraphNode(node) {
    const legacy = node._nbbLegacyOptions;
    delete node._nbbLegacyOptions;
    const slot = node.inputs?.findIndex((i) => i.name === "options") ?? -1;
    if (!legacy || slot < 0 || node.inputs[slot].link != null || !node.graph) return;
    const options = window.LiteGraph?.createNode?.(OPTIONS_ID);
    if (!options) return;
    let changed = false;
    for (const [name, value] of Object.entries(legacy)) {
      const w = widget(options, name);
      const allowed = w && (!w.options?.values || w.options.values.includes(value)) && typeof value === typeof w.value;
      if (allowed && w.value !== value) {
        w.value = value;
        changed = true;
      }
    }
    if (!changed) return;
    options.pos = [node.pos[0], node.pos[1] + node.size[1] + 50]; // below the node it feeds
    node.graph.add(options);
    options.connect(0, node, slot);
  },
  async nodeCreated(node) {
    if (node.comfyClass !== NODE_ID) return;
    const providerWidget = widget(node, "provider");
    if (!providerWidget) return;
    const original = providerWidget.callback;
    providerWidget.callback = function (value, ...rest) {
      const result = original?.call(this, value, ...rest);
      applyProvider(node, value, true);
      return result;
    };
    // Both views show "fal (no key)" / "auto → google" (whom auto uses for these settings: autoPick; the value stays the plain id): the canvas (and the
    // Vue-nodes view of later frontends) asks getOptionLabel; frontend 1.43's Vue-nodes view passes the
    // widget's options to its PrimeVue Select as props, where optionLabel names each option.
    const label = (value) => {
      keyStatusMark(node);
      return providerLabel(catalog.data, value, widget(node, "model")?.value, autoPick(node));
    };
    Object.assign(providerWidget.options, { getOptionLabel: label, optionLabel: label });
    watchModel(node);
    // Workflows load their saved values after creation: narrow once they are in place.
    setTimeout(() => applyProvider(node, providerWidget.value, false), 0);
    addBadge(node);
  },
});
