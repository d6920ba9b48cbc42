// The frontend's pure logic, run with node's test runner: `node --test tests/js`.
import { test } from "node:test";
import assert from "node:assert/strict";

import { autoQuery, badgeFor, carryOver, createAutoPicker, createCatalogStore, keyStatusChanged, keyStatusText, legacyOptions, promptCount, providerLabel, stableModel } from "../../web/js/nbb_logic.js";

const offer = (prices, resolutions = ["1K", "2K", "4K"], unit = "usd") => ({ resolutions, prices, price_unit: unit, aspect_ratios: [], max_refs: 14 });
const catalog = {
  auto: { "Nano Banana Pro": "google", "Nano Banana 2": null },
  providers: [
    { id: "google", display_name: "Google Gemini API", has_key: true, models: { "Nano Banana Pro": offer({ "1K": 0.134, "2K": 0.134, "4K": 0.24 }), "Nano Banana": offer({ "": 0.039 }, []) } },
    { id: "fal", display_name: "fal.ai", has_key: false, models: { "Nano Banana Pro": offer({ "1K": 0.15 }) } },
    { id: "gw", display_name: "My gateway", has_key: true, models: { "Nano Banana Pro": offer({}) } },
    { id: "vydra", display_name: "Vydra", has_key: true, models: { "Nano Banana": offer({ "": 2 }, [], "credits") } },
  ],
};
const base = { catalog, providerId: "google", model: "Nano Banana Pro (Gemini 3 Pro Image)", resolution: "1K", count: 1, promptText: "a cat", promptPerLine: false, imageMode: "references" };

test("labels map to the stable model names; bare names stay", () => {
  assert.equal(stableModel("Nano Banana Pro (Gemini 3 Pro Image)"), "Nano Banana Pro");
  assert.equal(stableModel("Nano Banana 2"), "Nano Banana 2");
});

test("prompt lines count only with prompt_per_line, and blank lines do not", () => {
  assert.equal(promptCount("a\nb\n\n  \nc", true), 3);
  assert.equal(promptCount("a\nb", false), 1);
  assert.equal(promptCount("", true), 1);
});

test("one image: the list price per image", () => {
  assert.deepEqual(badgeFor(base), { text: "~$0.134/image", level: "ok", images: 1, total: 0.134, unit: "usd" });
});

test("calls = prompt lines x count (the batch example: 4 lines x 2 = 8 images)", () => {
  const badge = badgeFor({ ...base, promptText: "one\ntwo\nthree\nfour", promptPerLine: true, count: 2, resolution: "4K" });
  assert.equal(badge.images, 8);
  assert.equal(badge.text, "~$1.92 for 8 images");
  assert.ok(Math.abs(badge.total - 8 * 0.24) < 1e-9);
});

test("each image mode says the price is per input image", () => {
  assert.equal(badgeFor({ ...base, imageMode: "each image" }).text, "~$0.134 per input image");
  assert.equal(badgeFor({ ...base, imageMode: "each image", count: 2 }).text, "~$0.268 per input image (2 images each)");
});

test("a fixed-size model ignores a stale resolution; credits are not dollars", () => {
  assert.equal(badgeFor({ ...base, model: "Nano Banana (Gemini 2.5 Flash Image)", resolution: "4K", count: 2 }).text, "~$0.078 for 2 images");
  assert.equal(badgeFor({ ...base, providerId: "vydra", model: "Nano Banana", count: 3 }).text, "6 credits for 3 images");
});

test("price unknown rather than nothing", () => {
  const badge = badgeFor({ ...base, providerId: "gw", count: 3 });
  assert.equal(badge.text, "price unknown · 3 images");
  assert.equal(badge.level, "warn");
});

test("no key: marked for the chosen provider, and for auto when nobody has one", () => {
  const fal = badgeFor({ ...base, providerId: "fal" });
  assert.equal(fal.text, "no key · ~$0.15/image");
  assert.equal(fal.level, "error");
  assert.equal(badgeFor({ ...base, providerId: "auto", model: "Nano Banana 2 (Gemini 3.1 Flash Image)" }).text, "no key");
  assert.equal(badgeFor({ ...base, providerId: "auto" }).text, "~$0.134/image"); // auto picks google, which has a key
});

test("a model the provider does not offer is marked on the node", () => {
  const badge = badgeFor({ ...base, providerId: "vydra" });
  assert.equal(badge.text, "Vydra does not offer Nano Banana Pro");
  assert.equal(badge.level, "error");
});

test("carry-over keeps ratio and resolution when the new model offers them", () => {
  const widgets = [
    { name: "model.aspect_ratio", value: "auto", options: { values: ["auto", "1:1", "16:9"] } },
    { name: "model.resolution", value: "1K", options: { values: ["0.5K", "1K", "2K", "4K"] } },
  ];
  assert.deepEqual(carryOver({ aspect_ratio: "16:9", resolution: "2K" }, widgets), [
    { name: "model.aspect_ratio", value: "16:9" },
    { name: "model.resolution", value: "2K" },
  ]);
  // Not offered by the new model (8:1 on Pro): keep the new default.
  assert.deepEqual(carryOver({ aspect_ratio: "8:1" }, widgets), []);
  // Switching to a fixed-size model: there is no resolution widget to set.
  assert.deepEqual(carryOver({ resolution: "2K" }, widgets.slice(0, 1)), []);
});

test("key status wording", () => {
  assert.equal(keyStatusText({ source: "env", env_name: "GEMINI_API_KEY" }), "set from GEMINI_API_KEY");
  assert.equal(keyStatusText({ source: "file" }), "set in keys file");
  assert.equal(keyStatusText({ source: null }), "missing");
});

test("the provider widget shows who has a key and whom auto picks", () => {
  assert.equal(providerLabel(catalog, "fal", "Nano Banana Pro (Gemini 3 Pro Image)"), "fal (no key)");
  assert.equal(providerLabel(catalog, "google", "Nano Banana Pro (Gemini 3 Pro Image)"), "google");
  assert.equal(providerLabel(catalog, "auto", "Nano Banana Pro (Gemini 3 Pro Image)"), "auto → google");
  assert.equal(providerLabel(catalog, "auto", "Nano Banana 2 (Gemini 3.1 Flash Image)"), "auto (no key)");
  assert.equal(providerLabel(null, "fal", "x"), "fal");
});

const withKey = (has) => ({ ...catalog, auto: { ...catalog.auto, "Nano Banana Pro": has ? "fal" : null }, providers: catalog.providers.map((p) => (p.id === "fal" ? { ...p, has_key: has } : p)) });

test("key status refresh: after the keys tab saves a key, the badge and the provider list follow", async () => {
  let hasKey = false;
  const changes = [];
  const store = createCatalogStore(async () => withKey(hasKey), (data) => changes.push(data));
  await store.refresh();
  assert.equal(badgeFor({ ...base, catalog: store.data, providerId: "fal" }).text, "no key · ~$0.15/image");
  assert.equal(providerLabel(store.data, "fal", base.model), "fal (no key)");
  hasKey = true; // the keys tab wrote keys.json, then refreshed
  await store.refresh();
  assert.equal(badgeFor({ ...base, catalog: store.data, providerId: "fal" }).text, "~$0.15/image");
  assert.equal(providerLabel(store.data, "fal", base.model), "fal");
  assert.equal(changes.length, 2);
});

test("key status refresh: a slow earlier answer never overwrites a newer one", async () => {
  const answers = [];
  const store = createCatalogStore(() => new Promise((resolve) => answers.push(resolve)));
  const first = store.refresh();
  const second = store.refresh();
  await new Promise((r) => setImmediate(r));
  answers[1](withKey(true)); // the newer request answers first
  await second;
  answers[0](withKey(false)); // then the stale one
  await first;
  assert.equal(store.data.providers.find((p) => p.id === "fal").has_key, true);
});

test("key status refresh: an unreachable server keeps what was known", async () => {
  let up = true;
  const store = createCatalogStore(async () => {
    if (!up) throw new Error("offline");
    return withKey(true);
  });
  await store.refresh();
  up = false;
  await store.refresh();
  assert.equal(store.data.providers.find((p) => p.id === "fal").has_key, true);
});

test("a node saved before the options node: its last nine values are the old advanced settings", () => {
  const old = ["a cat", "auto", "Nano Banana", "3:2", 1000, "randomize", 2, true, "references", "flag", "resize", "", 1, false, "auto", true, "nano_banana_bridge", ""];
  assert.deepEqual(legacyOptions(old), { on_failure: "flag", size_policy: "resize", system_prompt: "", temperature: 1, web_search: false, upload_format: "auto", use_cache: true, save_to: "nano_banana_bridge", model_id_override: "" });
  const withResolution = ["a cat", "google", "Nano Banana Pro", "16:9", "2K", 42, "fixed", 1, false, "each image", "skip", "pad", "be brief", 0.5, true, "png", false, "mine", "x-id"];
  assert.equal(legacyOptions(withResolution).save_to, "mine");
  assert.equal(legacyOptions(["a cat", "auto", "Nano Banana 2 (Gemini 3.1 Flash Image)", "auto", "1K", 0, "randomize", 1, false, "references"]), null); // the new layout
});

test("Batch Mode (delivery batch on the options node): the provider's share of the price, said on the badge", () => {
  const withBatch = { ...catalog, providers: catalog.providers.map((p) => (p.id === "google" ? { ...p, batch_discount: 0.5 } : p)) };
  const badge = badgeFor({ ...base, catalog: withBatch, delivery: "batch", promptText: "a\nb", promptPerLine: true, resolution: "4K" });
  assert.equal(badge.text, "~$0.24 for 2 images · Batch Mode");
  assert.ok(Math.abs(badge.total - 2 * 0.24 * 0.5) < 1e-9);
  assert.deepEqual(badgeFor({ ...base, catalog: withBatch, delivery: "now" }), badgeFor(base));
  const fal = badgeFor({ ...base, catalog: withBatch, providerId: "fal", delivery: "batch" });
  assert.equal(fal.level, "error");
  assert.equal(fal.text, "fal.ai has no Batch Mode");
});

test("key status changes are told apart from other catalog changes (prices, models)", () => {
  assert.equal(keyStatusChanged(catalog, structuredClone(catalog)), false);
  const cheaper = structuredClone(catalog);
  cheaper.providers[0].models["Nano Banana Pro"].prices["1K"] = 0.1;
  assert.equal(keyStatusChanged(catalog, cheaper), false);
  assert.equal(keyStatusChanged(catalog, withKey(true)), true); // fal got a key (and auto now picks it)
  assert.equal(keyStatusChanged(null, catalog), true);
});

// "auto" as the server answers it for the node's settings (POST /nano_banana_bridge/auto): fal has no
// key here, so an answer naming it is the server's, not the catalog's pick by model alone.
const pro = "Nano Banana Pro (Gemini 3 Pro Image)";

test("auto: the label and the badge name the provider the server answers for these settings", () => {
  const pick = { model: "Nano Banana Pro", provider: "gw" };
  assert.equal(providerLabel(catalog, "auto", pro), "auto → google"); // no answer yet: by model alone
  assert.equal(providerLabel(catalog, "auto", pro, pick), "auto → gw");
  assert.equal(badgeFor({ ...base, providerId: "auto" }).text, "~$0.134/image");
  assert.equal(badgeFor({ ...base, providerId: "auto", autoPick: pick }).text, "price unknown"); // gw's price, not google's
  assert.equal(badgeFor({ ...base, providerId: "auto", autoPick: { model: "Nano Banana Pro", provider: "fal" }, resolution: "1K" }).text, "no key · ~$0.15/image");
  // An answer for another model (the model changed since) is not used; nor is one for a named provider.
  assert.equal(providerLabel(catalog, "auto", "Nano Banana 2 (Gemini 3.1 Flash Image)", pick), "auto (no key)");
  assert.equal(providerLabel(catalog, "google", pro, pick), "google");
  assert.equal(badgeFor({ ...base, autoPick: pick }).text, "~$0.134/image");
});

test("auto: when no keyed provider can run the settings, both say so", () => {
  const none = { model: "Nano Banana Pro", provider: null, reason: "unfit", error: "Thinking level HIGH is not available" };
  assert.equal(providerLabel(catalog, "auto", pro, none), "auto (none fits)");
  assert.deepEqual(badgeFor({ ...base, providerId: "auto", autoPick: none }), { text: "no keyed provider fits", level: "error", images: 1, total: null, unit: null });
  assert.equal(providerLabel(catalog, "auto", pro, { ...none, reason: "no_key" }), "auto (no key)");
  assert.equal(badgeFor({ ...base, providerId: "auto", autoPick: { ...none, reason: "invalid" } }).text, "invalid setting");
});

test("auto: the question carries only what decides the provider, clipped", () => {
  const query = autoQuery({ model: pro, aspectRatio: "16:9", resolution: "2K", count: "3", imageMode: "references", references: 2, conversation: 1, options: { system_prompt: `  ${"x".repeat(900)}`, thinking_level: "HIGH", temperature: 0.5 } });
  assert.deepEqual(Object.keys(query).sort(), ["aspect_ratio", "conversation", "count", "image_mode", "model", "options", "references", "resolution"]);
  assert.equal(query.model, "Nano Banana Pro");
  assert.equal(query.options.system_prompt.length, 500);
  assert.equal(query.options.thinking_level, "HIGH");
  assert.equal(query.conversation, true);
  assert.equal(query.count, 3);
  assert.equal(autoQuery({ model: pro }).options, null); // no options node: the defaults
});

test("auto: asked once per settings, after they settle; the newest answer wins; a failure keeps the last", async () => {
  const asked = [];
  const replies = [];
  const shown = [];
  const picker = createAutoPicker((query) => {
    asked.push(query);
    return new Promise((resolve) => replies.push(resolve));
  }, (answer) => shown.push(answer.provider), 5);
  const settle = () => new Promise((r) => setTimeout(r, 30));
  assert.equal(picker.ask("a", { n: 1 }), true);
  assert.equal(picker.ask("b", { n: 2 }), true); // changed again before the delay: only this one is asked
  assert.equal(picker.ask("b", { n: 2 }), false); // a redraw with the same settings asks nothing
  await settle();
  assert.deepEqual(asked, [{ n: 2 }]);
  picker.ask("c", { n: 3 });
  await settle();
  replies[1]({ provider: "newer" });
  await settle();
  replies[0]({ provider: "older" }); // the slower earlier answer arrives last
  await settle();
  assert.deepEqual(shown, ["newer"]);
  assert.equal(picker.answer.provider, "newer");
  picker.forget(); // the catalog changed: the same settings are asked again
  picker.ask("c", { n: 3 });
  await settle();
  replies[2](null); // the route failed
  await settle();
  assert.equal(picker.answer.provider, "newer");
  assert.equal(asked.length, 3);
});
