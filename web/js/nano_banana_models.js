// Nano Banana Bridge: "Check models for this key", a node menu entry that asks the pack's
// /nano_banana_bridge/models route (on demand; the server caches each provider's list for a while)
// which Nano Banana ids the configured key can use, and shows the answer as a toast.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_ID = "NanoBananaBridge";

function toast(severity, summary, detail) {
  const t = app.extensionManager?.toast;
  if (t?.add) t.add({ severity, summary, detail, life: 12000 });
  else console.info(`[Nano Banana Bridge] ${summary}: ${detail}`);
}

export function describeModels(answer) {
  if (!answer?.listed) return { severity: "warn", detail: answer?.error || "No answer." };
  const lines = Object.entries(answer.nano_banana || {}).map(
    ([name, v]) => `${v.available ? "✓" : "✗"} ${name} (${v.ids.join(", ")})`
  );
  for (const [oldId, newId] of Object.entries(answer.renamed || {})) lines.push(`${oldId} is retired: use ${newId}`);
  const some = Object.values(answer.nano_banana || {}).some((v) => v.available);
  return { severity: some ? "info" : "warn", detail: lines.join("\n") + (answer.cached ? "\n(cached list)" : "") };
}

async function checkModels(node) {
  let provider = node.widgets?.find((w) => w.name === "provider")?.value;
  if (provider === "auto") {
    const catalog = await api.fetchApi("/nano_banana_bridge/catalog").then((r) => r.json()).catch(() => null);
    const label = String(node.widgets?.find((w) => w.name === "model")?.value ?? "");
    provider = catalog?.auto?.[label.split(" (")[0]]; // "Nano Banana Pro (Gemini 3 Pro Image)" -> its stable name
    if (!provider) return toast("warn", "No provider with a key", "Set a key for a provider first (see the README, API keys).");
  }
  const answer = await api
    .fetchApi(`/nano_banana_bridge/models?provider=${encodeURIComponent(provider)}&refresh=1`)
    .then((r) => r.json())
    .catch((e) => ({ listed: false, error: String(e) }));
  const { severity, detail } = describeModels(answer);
  toast(severity, `Models your key can use at ${provider}`, detail);
}

app.registerExtension({
  name: "nano_banana_bridge.model_list",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_ID) return;
    const original = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (canvas, options) {
      const result = original?.apply(this, arguments);
      options.push({ content: "Check models for this key", callback: () => checkModels(this) });
      return result;
    };
  },
});
