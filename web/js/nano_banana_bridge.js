// Nano Banana Bridge frontend: narrows the model list to what the chosen provider offers and
// warns when that provider has no API key configured. Everything here is a convenience; the
// node checks the same things when it runs, with messages that say what to do.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "NanoBananaBridge";
let catalogPromise = null;

function catalog() {
  if (!catalogPromise) {
    catalogPromise = api
      .fetchApi("/nano_banana_bridge/catalog")
      .then((r) => (r.ok ? r.json() : null))
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
    if (!allowed.includes(modelWidget.value)) {
      modelWidget.value = allowed[0];
      modelWidget.callback?.(modelWidget.value);
    }
  }
  node.setDirtyCanvas?.(true, true);
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
    // Workflows load their saved values after creation: narrow once they are in place.
    setTimeout(() => applyProvider(node, providerWidget.value, false), 0);
  },
});
