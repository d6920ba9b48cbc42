// Nano Banana Bridge frontend: narrows the model list to what the chosen provider offers, warns
// when that provider has no API key configured, and shows the list price as a node badge (the
// schema's price badge is drawn only for Comfy's own API nodes). Everything here is a
// convenience; the node checks the same things when it runs, with messages that say what to do.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "NanoBananaBridge";
let catalogPromise = null;

function catalog() {
  if (!catalogPromise) {
    catalogPromise = api
      .fetchApi("/nano_banana_bridge/catalog")
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => {
        // A broken keys.json / providers.json: the node still works with the built-in presets; say what to fix.
        if (data?.error) warn("Nano Banana Bridge configuration", data.error);
        return data;
      })
      .catch(() => null);
  }
  return catalogPromise;
}

function warn(summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity: "warn", summary, detail, life: 8000 });
  else console.warn(`[Nano Banana Bridge] ${summary}: ${detail}`);
}

async function applyProvider(node, providerId, announce) {
  const data = await catalog();
  const modelWidget = node.widgets?.find((w) => w.name === "model");
  if (!data || !modelWidget?.options?.values) return;
  if (!modelWidget._nbbAllModels) modelWidget._nbbAllModels = [...modelWidget.options.values];
  const provider = data.providers.find((p) => p.id === providerId);
  let allowed = modelWidget._nbbAllModels;
  if (provider) {
    allowed = allowed.filter((m) => m in provider.models);
    if (announce && !provider.has_key) {
      warn(
        `No API key for ${provider.display_name}`,
        `Set ${provider.key_env.join(" or ")} before starting ComfyUI, or add "${provider.key_owner}" to ${data.keys_file}.`
      );
    }
  } else if (providerId === "auto" && announce && !data.providers.some((p) => p.has_key)) {
    warn("No API key configured", `Add a key for any provider (see the README); keys file: ${data.keys_file}`);
  }
  if (allowed.length) {
    modelWidget.options.values = allowed;
    // Never switch the model for the user (that would reset its settings): say what is offered.
    if (announce && provider && !allowed.includes(modelWidget.value)) {
      warn(`${provider.display_name} does not offer ${modelWidget.value}`, `Pick one of: ${allowed.join(", ")}.`);
    }
  }
  node.setDirtyCanvas?.(true, true);
}

let catalogData = null;
catalog().then((data) => (catalogData = data));

function widgetValue(node, suffix) {
  return node.widgets?.find((w) => w.name === suffix || w.name?.endsWith(`.${suffix}`))?.value;
}

// The price for the current widget values, from the catalog's list prices; "" when unknown.
function priceText(node) {
  if (!catalogData) return "";
  const model = widgetValue(node, "model");
  let providerId = widgetValue(node, "provider");
  if (providerId === "auto") providerId = catalogData.auto?.[model];
  const offer = catalogData.providers.find((p) => p.id === providerId)?.models?.[model];
  if (!offer || !offer.prices) return "";
  const resolution = offer.resolutions.length ? widgetValue(node, "resolution") : "";
  const price = offer.prices[resolution] ?? offer.prices[""];
  if (price === undefined) return "";
  const count = Number(widgetValue(node, "count") || 1);
  const total = price * count;
  const amount = offer.price_unit === "usd" ? `~$${total.toFixed(total < 0.1 ? 3 : 2)}` : `${total} ${offer.price_unit}`;
  return `${amount}${count > 1 ? ` (${count} images)` : "/image"}`;
}

app.registerExtension({
  name: "nano_banana_bridge.provider_models",
  async nodeCreated(node) {
    if (node.comfyClass !== NODE_ID) return;
    const providerWidget = node.widgets?.find((w) => w.name === "provider");
    if (!providerWidget) return;
    const original = providerWidget.callback;
    providerWidget.callback = function (value, ...rest) {
      const result = original?.call(this, value, ...rest);
      applyProvider(node, value, true);
      return result;
    };
    // Switching model rebuilds its sub-widgets with their defaults. Watch the model value on every
    // draw and carry over the aspect ratio and resolution when the new model offers them too.
    let seen = { model: undefined, values: {} };
    const originalDraw = node.onDrawForeground;
    node.onDrawForeground = function (...args) {
      const model = widgetValue(node, "model");
      const subWidgets = (node.widgets || []).filter((w) => /\.(aspect_ratio|resolution)$/.test(w.name || ""));
      if (seen.model !== undefined && model !== seen.model) {
        for (const w of subWidgets) {
          const kept = seen.values[w.name.split(".").pop()];
          if (kept !== undefined && w.options?.values?.includes(kept)) w.value = kept;
        }
      }
      seen = { model, values: Object.fromEntries(subWidgets.map((w) => [w.name.split(".").pop(), w.value])) };
      return originalDraw?.apply(this, args);
    };
    // Workflows load their saved values after creation: narrow once they are in place.
    setTimeout(() => applyProvider(node, providerWidget.value, false), 0);
    const Badge = window.LGraphBadge;
    if (Badge && Array.isArray(node.badges)) {
      let cached = { text: null, badge: null };
      node.badges.push(() => {
        const text = priceText(node);
        if (text !== cached.text) cached = { text, badge: new Badge({ text, fgColor: "#dfe8d0", bgColor: "#2f4a1e" }) };
        return cached.badge;
      });
    }
  },
});
