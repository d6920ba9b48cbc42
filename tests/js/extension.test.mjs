// The extension as ComfyUI runs it (nodeCreated, the badge, the provider widget's labels), against a
// stub app and api, in both of ComfyUI's views: the canvas asks the widget's getOptionLabel and redraws
// by itself; frontend 1.43's Vue-nodes view passes the widget's options to a PrimeVue Select (optionLabel)
// and redraws a badge or a label only when reactive state it read changes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("./comfy_stubs.mjs", import.meta.url);

const PRO = "Nano Banana Pro (Gemini 3 Pro Image)";
const FLASH = "Nano Banana (Gemini 2.5 Flash Image)";
const offer = (prices) => ({ resolutions: ["1K", "2K", "4K"], prices, price_unit: "usd", aspect_ratios: [], max_refs: 14 });
const catalogWith = (falKey) => ({
  auto: { "Nano Banana Pro": falKey ? "google" : "google" },
  providers: [
    { id: "google", display_name: "Google Gemini API", has_key: true, key_env: ["GEMINI_API_KEY"], models: { "Nano Banana Pro": offer({ "1K": 0.134 }) } },
    { id: "fal", display_name: "fal.ai", has_key: falKey, key_env: ["FAL_KEY"], models: { "Nano Banana Pro": offer({ "1K": 0.15 }) } },
    { id: "vydra", display_name: "Vydra", has_key: true, key_env: ["VYDRA_API_KEY"], models: { "Nano Banana": offer({ "": 2 }) } },
  ],
});

let served = catalogWith(false);
// POST /nano_banana_bridge/auto as the server answers it: here, a connected conversation moves auto to fal.
const asked = [];
const autoAnswer = (query) => ({ model: query.model, provider: query.conversation ? "fal" : "google" });
const extensions = [];
const toasts = [];
const removedToasts = [];
globalThis.window = { LGraphBadge: class { constructor(options) { Object.assign(this, options); } } };
globalThis.comfyStubs = {
  app: {
    registerExtension: (extension) => extensions.push(extension),
    extensionManager: { toast: { add: (t) => toasts.push(t), remove: (t) => removedToasts.push(t) }, registerSidebarTab: () => {} },
    graph: { nodes: [], setDirtyCanvas: () => {} },
  },
  api: {
    fetchApi: async (path, init) => {
      if (path !== "/nano_banana_bridge/auto") return { ok: true, json: async () => structuredClone(served) };
      asked.push(JSON.parse(init.body));
      return { ok: true, json: async () => autoAnswer(JSON.parse(init.body)) };
    },
  },
};
await import("../../web/js/nano_banana_bridge.js");
const bridge = extensions.find((e) => e.name === "nano_banana_bridge.provider_models");
await bridge.setup();

// The widget's value entry as frontend 1.43's widget store holds it: a reactive object; here a proxy that
// records which properties were read, as Vue's tracking would.
function reactiveEntry(value, options) {
  const reads = new Set();
  const writes = [];
  const tracked = (target) => new Proxy(target, { get: (t, key) => (reads.add(key), t[key]), set: (t, key, v) => (writes.push(key), (t[key] = v), true) });
  return { entry: tracked({ value, options: tracked(options) }), reads, writes };
}

function bridgeNode(provider) {
  const providerOptions = { values: ["auto", "google", "fal", "vydra"] };
  const modelOptions = { values: [PRO, FLASH] };
  const state = reactiveEntry(provider, providerOptions);
  const model = reactiveEntry(PRO, modelOptions);
  const widgets = [
    { name: "provider", value: provider, options: providerOptions, _state: state.entry },
    { name: "model", value: PRO, options: modelOptions, _state: model.entry },
    { name: "model.resolution", value: "1K", options: { values: ["1K", "2K", "4K"] } },
    { name: "count", value: 1 },
    { name: "prompt", value: "a cat" },
  ];
  const node = { comfyClass: "NanoBananaBridge", widgets, inputs: [], badges: [], setDirtyCanvas: () => {} };
  return { node, provider: widgets[0], reads: state.reads, model: widgets[1], modelWrites: model.writes };
}

const badgeText = (node) => node.badges[0]().text;
const settle = async (done) => {
  for (let i = 0; i < 200 && !done(); i++) await new Promise((r) => setTimeout(r, 5));
};

test("the provider list says who has a key, in the canvas and in the Vue-nodes view", async () => {
  const { node, provider } = bridgeNode("fal");
  await bridge.nodeCreated(node);
  assert.equal(provider.options.getOptionLabel("fal"), "fal (no key)");
  assert.equal(provider.options.optionLabel("fal"), "fal (no key)"); // what 1.43's Vue-nodes select shows
  assert.equal(provider.options.optionLabel("google"), "google");
  assert.equal(provider.options.optionLabel("auto"), "auto → google");
  assert.equal(provider.value, "fal"); // the value stays the plain id
  assert.equal(badgeText(node), "no key · ~$0.15/image");
});

test("a key saved in the keys tab shows in the Vue-nodes view too: the badge and the labels read a mark it changes", async () => {
  const { node, provider, reads } = bridgeNode("fal");
  await bridge.nodeCreated(node);
  globalThis.comfyStubs.app.graph.nodes = [node];
  reads.clear();
  badgeText(node);
  provider.options.optionLabel("fal");
  assert.ok(reads.has("nbbKeyStatus"), "the badge and the label read the key status mark (so Vue tracks it)");

  served = catalogWith(true); // the keys tab wrote keys.json; choosing the provider again refreshes the catalog
  provider.callback("fal");
  await settle(() => provider._state.nbbKeyStatus);
  assert.equal(provider._state.nbbKeyStatus, 1, "the mark changed, so the Vue-nodes view redraws");
  assert.equal(badgeText(node), "~$0.15/image");
  assert.equal(provider.options.optionLabel("fal"), "fal");

  provider.callback("fal"); // a refresh that changes no key: no redraw asked for
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(provider._state.nbbKeyStatus, 1);
  served = catalogWith(false);
  globalThis.comfyStubs.app.graph.nodes = [];
});

test("the no-key toast goes once the key is saved, instead of staying its 8 s", async () => {
  const { node, provider } = bridgeNode("google");
  await bridge.nodeCreated(node);
  provider.callback("fal"); // fal has no key: a warning
  await settle(() => toasts.some((t) => t.summary === "No API key for fal.ai"));
  const warning = toasts.find((t) => t.summary === "No API key for fal.ai");
  assert.ok(warning, "choosing a provider without a key warns");
  provider.callback("google"); // a refresh in which fal still has no key: the warning stays
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(!removedToasts.includes(warning));
  served = catalogWith(true); // the keys tab saved fal's key and refreshed the catalog
  provider.callback("google");
  await settle(() => removedToasts.includes(warning));
  assert.ok(removedToasts.includes(warning), "the warning about a key that is now there was taken down");
  served = catalogWith(false);
});

test("the model list narrows to the provider's models in the Vue-nodes view too (written through the reactive entry)", async () => {
  const { node, provider, model, modelWrites } = bridgeNode("google");
  await bridge.nodeCreated(node);
  await settle(() => model.options.values.length === 1); // narrowed to google's models once the node is in place
  modelWrites.length = 0;
  provider.callback("vydra");
  await settle(() => model.options.values[0] === FLASH);
  assert.deepEqual(model.options.values, [FLASH]); // what the canvas lists
  assert.ok(modelWrites.includes("values"), "written through the reactive entry, so the Vue-nodes select lists it");
});

test("auto names the provider the server answers for the node's settings, in both views, and asks again when a link changes", async () => {
  served = catalogWith(true);
  await bridge.setup();
  const { node, provider } = bridgeNode("auto");
  await bridge.nodeCreated(node);
  badgeText(node); // a draw asks (after the settings settle)
  await settle(() => provider._state.nbbKeyStatus);
  assert.equal(provider.options.getOptionLabel("auto"), "auto → google");
  assert.equal(asked.at(-1).conversation, false);
  const marked = provider._state.nbbKeyStatus;
  node.inputs.push({ name: "conversation", link: 7 }, { name: "model.images.image_1", link: 8 }); // connected in the graph
  assert.equal(badgeText(node), "~$0.134/image"); // google's, until the server answers
  await settle(() => provider._state.nbbKeyStatus > marked);
  assert.equal(asked.at(-1).conversation, true);
  assert.equal(asked.at(-1).references, 1);
  assert.equal(provider.options.optionLabel("auto"), "auto → fal"); // the Vue-nodes view's label: its mark changed, so it redraws
  assert.equal(provider.options.getOptionLabel("auto"), "auto → fal");
  assert.equal(badgeText(node), "~$0.15/image"); // fal's price
  const count = asked.length;
  badgeText(node);
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(asked.length, count, "redraws with the same settings ask nothing");
  served = catalogWith(false);
});

test("an options node connected through Reroute nodes is read, as a run gets its options through them", async () => {
  const { node } = bridgeNode("google");
  await bridge.nodeCreated(node);
  assert.equal(badgeText(node), "~$0.134/image");
  const options = { comfyClass: "NanoBananaOptions", widgets: [{ name: "delivery", value: "batch" }] };
  const inner = { type: "Reroute", getInputNode: () => options };
  const outer = { type: "Reroute", getInputNode: () => inner };
  node.inputs.push({ name: "options", link: 9 });
  node.getInputNode = (slot) => (node.inputs[slot]?.name === "options" ? outer : null);
  assert.equal(badgeText(node), "Google Gemini API has no Batch Mode"); // the catalog here gives google no batch_discount
});
