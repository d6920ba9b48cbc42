// Module hooks for tests that import the frontend extension itself: ComfyUI serves scripts/app.js and
// scripts/api.js beside the extension; here they resolve to whatever the test put on globalThis.comfyStubs.
export async function resolve(specifier, context, next) {
  const name = specifier.match(/\/scripts\/(app|api)\.js$/)?.[1];
  if (name) return { url: `data:text/javascript,export const ${name} = globalThis.comfyStubs.${name};`, shortCircuit: true };
  return next(specifier, context);
}
