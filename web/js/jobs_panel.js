// Nano Banana Bridge: the jobs & spend panel (a sidebar tab). Pending journaled jobs (provider, task
// id, age, status) with Cancel where the provider allows it, and spend per day and provider from the
// cost ledger. Everything shown comes from /nano_banana_bridge/jobs (nodes/jobs_routes.py) and is
// put in the page as text, never as HTML: journal files live in the output folder, which is not trusted.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const JOBS_ROUTE = "/nano_banana_bridge/jobs";
const CANCEL_ROUTE = "/nano_banana_bridge/jobs/cancel";
const CELL = "padding:3px 6px;border-bottom:1px solid var(--border-color);text-align:left;vertical-align:top";

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  if (props.style) node.style.cssText = props.style;
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function money(amount, unit) {
  if (amount === null || amount === undefined) return "?";
  return !unit || unit === "usd" ? `$${Number(amount).toFixed(2)}` : `${Number(amount)} ${unit}`;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "?";
  if (seconds < 90) return `${seconds}s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function table(headers, rows) {
  return el(
    "table",
    { style: "width:100%;border-collapse:collapse;font-size:12px" },
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { textContent: h, style: `${CELL};opacity:.7;font-weight:600` })))),
    el("tbody", {}, ...rows)
  );
}

function button(label, onClick) {
  return el("button", {
    textContent: label,
    className: `nbb-jobs-${label.toLowerCase()}`,
    onclick: onClick,
    style: "padding:2px 8px;border-radius:4px;border:1px solid var(--border-color);background:var(--comfy-menu-bg);color:var(--fg-color);cursor:pointer",
  });
}

async function cancelJob(job, note) {
  if (!confirm(`Cancel ${job.task_id ?? "this job"} at ${job.provider}? Whatever has already finished can still be collected by queuing the same run again.`)) return;
  note.textContent = "Cancelling…";
  const response = await api
    .fetchApi(CANCEL_ROUTE, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ id: job.id }) })
    .catch(() => null);
  const data = response ? await response.json().catch(() => ({})) : {};
  note.textContent = response?.ok ? data.message : `Not cancelled: ${data.error ?? "no answer from the server"}`;
}

export async function renderJobsPanel(root) {
  root.replaceChildren(el("div", { textContent: "Loading…", style: "padding:12px" }));
  const response = await api.fetchApi(JOBS_ROUTE, { cache: "no-store" }).catch(() => null);
  const data = response?.ok ? await response.json().catch(() => null) : null;
  const wrap = el("div", { className: "nbb-jobs", style: "padding:10px 12px;display:flex;flex-direction:column;gap:12px;font-size:13px;overflow:auto;height:100%" });
  const note = el("div", { className: "nbb-jobs-note", style: "white-space:pre-wrap;font-size:12px;opacity:.9" });
  wrap.append(el("div", { style: "display:flex;justify-content:space-between;align-items:center" }, el("b", { textContent: "Jobs & spend" }), button("Refresh", () => renderJobsPanel(root))));
  if (!data) {
    wrap.append(el("div", { textContent: "Could not read jobs and spend from the server." }));
    root.replaceChildren(wrap);
    return;
  }

  const today = Object.entries(data.spend.today ?? {});
  wrap.append(el("div", { className: "nbb-jobs-today", textContent: `Today: ${today.length ? today.map(([unit, amount]) => money(amount, unit)).join(" + ") : "$0.00"}` }));

  wrap.append(el("div", { style: "font-weight:600", textContent: `Pending jobs (${data.jobs.length})` }));
  if (data.jobs.length) {
    // One card per job: the sidebar is narrow, and task ids and statuses are long.
    for (const job of data.jobs) {
      wrap.append(
        el(
          "div",
          { className: "nbb-jobs-row", style: "border:1px solid var(--border-color);border-radius:6px;padding:6px 8px;display:flex;flex-direction:column;gap:3px;font-size:12px" },
          el(
            "div",
            { style: "display:flex;justify-content:space-between;align-items:center;gap:6px" },
            el("b", { textContent: `${job.provider ?? "?"} · ${job.kind === "batch" ? `batch of ${job.items}` : "job"} · ${age(job.age_seconds)} ago` }),
            job.can_cancel ? button("Cancel", () => cancelJob(job, note)) : null
          ),
          el("div", { textContent: job.task_id ?? "?", style: "word-break:break-all;opacity:.8;font-family:monospace" }),
          el("div", { textContent: job.status ?? "" })
        )
      );
    }
  } else {
    wrap.append(el("div", { textContent: "None: every submitted job has been collected.", style: "opacity:.7" }));
  }
  wrap.append(note);

  wrap.append(el("div", { style: "font-weight:600", textContent: "Spend, last 30 days" }));
  if (data.spend.error) wrap.append(el("div", { textContent: data.spend.error, style: "color:#e07a7a" }));
  const days = data.spend.days ?? [];
  if (days.length) {
    const rows = days.map((row) =>
      el(
        "tr",
        { className: "nbb-spend-row" },
        el("td", { textContent: row.day, style: CELL }),
        el("td", { textContent: row.provider, style: CELL }),
        el("td", { textContent: String(row.calls), style: CELL }),
        el("td", { textContent: money(row.cost, row.unit), style: CELL }),
        el("td", { textContent: [row.refused ? `${row.refused} refused` : "", row.maybe_billed ? `${row.maybe_billed} maybe billed` : ""].filter(Boolean).join(", "), style: CELL })
      )
    );
    wrap.append(table(["day", "provider", "calls", "cost", ""], rows));
  } else {
    wrap.append(el("div", { textContent: "Nothing spent yet.", style: "opacity:.7" }));
  }
  wrap.append(el("div", { textContent: `Ledger: ${data.spend.ledger}`, style: "font-size:11px;opacity:.6;word-break:break-all" }));
  root.replaceChildren(wrap);
}

app.registerExtension({
  name: "nano_banana_bridge.jobs_panel",
  async setup() {
    app.extensionManager?.registerSidebarTab?.({
      id: "nano-banana-jobs",
      icon: "pi pi-wallet",
      title: "Nano Banana jobs",
      tooltip: "Nano Banana Bridge: pending jobs and spend",
      type: "custom",
      render: (root) => renderJobsPanel(root),
    });
  },
});
