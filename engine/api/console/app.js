// The console: a login, then pages chosen by the location's hash (#/dashboard,
// #/failed, #/messages, #/message/<id>, #/audit). Only message ids ever appear in the
// location; search filters stay in this module's memory and travel in POST bodies.
// What the role may do comes from GET /api/me; pages and buttons it may not use are not
// drawn (and the API refuses them anyway).
import { ApiError, call, login, logout } from "/console/api.js";
import { lineChart } from "/console/charts.js";
import { diffLines } from "/console/diff.js";
import { append, confirmAction, h, table, when } from "/console/dom.js";
import { looksLikeHl7, parse, segmentsOf } from "/console/hl7.js";

const main = document.getElementById("main");
let me = null;
let lastSearch = {}; // the message browser's filters, kept in memory only

const PAGES = [
  { path: "dashboard", title: "Dashboard", needs: "status", draw: dashboard },
  { path: "failed", title: "Failed syncs", needs: "read", draw: failedQueue },
  { path: "messages", title: "Messages", needs: "search", draw: messages },
  { path: "audit", title: "Audit", needs: "audit", draw: audit },
];

const may = (permission) => me !== null && me.may.includes(permission);

function show(...nodes) {
  main.replaceChildren();
  append(main, nodes);
}

function failure(error) {
  if (error instanceof ApiError && error.status === 401) {
    me = null;
    drawLogin("Your session ended; log in again.");
    return null;
  }
  return h("p", { class: "error", role: "alert" }, error.message);
}

async function route() {
  if (me === null) {
    try {
      me = await call("GET", "/api/me");
    } catch (error) {
      drawLogin();
      return;
    }
  }
  drawHeader();
  const [, page, id] = location.hash.split("/");
  const allowed = PAGES.filter((p) => may(p.needs));
  try {
    if (page === "message" && id && may("read")) await messagePage(id);
    else {
      const chosen = allowed.find((p) => p.path === page) || allowed[0];
      if (chosen) await chosen.draw();
      else show(h("p", {}, "Your role has no console pages."));
    }
  } catch (error) {
    const shown = failure(error);
    if (shown) show(shown);
  }
}

function drawHeader() {
  const [, page] = location.hash.split("/");
  document.getElementById("nav").replaceChildren(...PAGES.filter((p) => may(p.needs)).map(
    (p) => h("a", { href: `#/${p.path}`, class: p.path === page ? "current" : null }, p.title)));
  document.getElementById("who").textContent = me ? `${me.name} (${me.role})` : "";
  document.getElementById("logout").hidden = me === null;
}

function drawLogin(note = "") {
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").textContent = "";
  document.getElementById("logout").hidden = true;
  const message = h("p", { class: "error", role: "alert" }, note);
  const form = h("form", { class: "login card", id: "login" },
    h("h1", {}, "Log in"),
    h("label", {}, "User", h("input", { name: "user", autocomplete: "username", required: true })),
    h("label", {}, "Password", h("input", { name: "password", type: "password",
      autocomplete: "current-password", required: true })),
    h("label", {}, "One-time code (TOTP)", h("input", { name: "totp", inputmode: "numeric",
      autocomplete: "one-time-code" })),
    h("button", { type: "submit" }, "Log in"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      await login(data.get("user"), data.get("password"), data.get("totp") || undefined);
      me = await call("GET", "/api/me");
      await route();
    } catch (error) {
      message.textContent = error.message;
    }
  });
  show(form);
}

// -- dashboard ---------------------------------------------------------------------------

// The dashboard draws itself again every REFRESH_MS while it is the page shown (a failure
// waiting, an error rate rising: watched, not looked up); leaving it stops the timer.
const REFRESH_MS = 30_000;
let refresh = null;

async function dashboard() {
  clearTimeout(refresh);
  refresh = setTimeout(() => {
    const [, page] = location.hash.split("/");
    if (me !== null && (page === undefined || page === "dashboard")) route();
  }, REFRESH_MS);
  const stats = await call("POST", "/api/stats", { window_minutes: 60, buckets: 30 });
  const failed = may("read") ? (await call("GET", "/api/deliveries/failed")).deliveries : [];
  const byDestination = {};
  for (const d of failed) byDestination[d.destination] = (byDestination[d.destination] || 0) + 1;
  const channels = Object.entries(stats.channels).map(([name, series]) =>
    h("section", { class: "card", dataset: { channel: name } }, h("h3", {}, `Channel ${name}`),
      lineChart("messages per bucket", series, stats.buckets)));
  const destinations = Object.entries(stats.destinations).map(([name, series]) => {
    const { latency_ms: latency, ...counts } = series;
    const waiting = byDestination[name] || 0;
    return h("section", { class: "card", dataset: { destination: name } },
      h("h3", {}, `Destination ${name}`),
      h("p", { class: waiting ? "error failed-count" : "ok failed-count" },
        waiting ? h("a", { href: "#/failed" }, `${waiting} failed deliveries waiting`)
          : "no failed deliveries"),
      lineChart("deliveries per bucket", counts, stats.buckets),
      lineChart("mean delivery latency (ms)", { latency }, stats.buckets));
  });
  show(h("h1", {}, "Dashboard"),
    h("p", { class: "muted" }, `Last hour, ${stats.buckets.length} buckets of `
      + `${Math.round(stats.bucket_seconds / 60)} min; messages counted when received; `
      + "drawn again every 30 s."),
    h("h2", {}, "Channels"), h("div", { class: "grid" }, channels),
    h("h2", {}, "Destinations"), h("div", { class: "grid" }, destinations));
}

// -- failed-sync queue -------------------------------------------------------------------

async function lastResponse(delivery) {
  const detail = await call("GET", `/api/messages/${delivery.message_id}`);
  const found = detail.deliveries.find((d) => d.id === delivery.id);
  const attempt = found && found.attempts[found.attempts.length - 1];
  if (!attempt) return "no attempt recorded";
  return `attempt ${attempt.number}: ${attempt.outcome} ${attempt.code || ""} `
    + `${attempt.error || ""}\n${attempt.response || "(no response)"}`;
}

// Polls the message until the delivery leaves `queued`, showing where it is (and stops
// when the page has moved on).
async function watch(delivery, cell) {
  while (cell.isConnected) {
    const detail = await call("GET", `/api/messages/${delivery.message_id}`);
    const now = detail.deliveries.find((d) => d.id === delivery.id);
    cell.textContent = now.status;
    cell.className = `status ${now.status}`;
    if (now.status !== "queued") return;
    await new Promise((resolve) => setTimeout(resolve, 500)); // polling interval
  }
}

async function failedQueue() {
  const { deliveries } = await call("GET", "/api/deliveries/failed");
  const notice = h("p", { role: "status" });
  const rows = deliveries.map((d) => {
    const status = h("td", { class: "status failed" }, d.status);
    const response = h("pre", { hidden: true, class: "last-response" });
    const actions = h("td", {},
      h("button", { type: "button", onclick: async () => {
        response.hidden = false;
        response.textContent = await lastResponse(d).catch((e) => e.message);
      } }, "Last response"));
    if (may("retry")) {
      append(actions, [
        h("button", { type: "button", class: "retry", onclick: async () => {
          if (!await confirmAction(`Retry delivery ${d.id} to ${d.destination}?`)) return;
          try {
            const done = await call("POST", "/api/deliveries/retry", { delivery_ids: [d.id] });
            notice.textContent = `${done.requeued} delivery requeued`;
            await watch(d, status);
          } catch (error) { notice.textContent = error.message; }
        } }, "Retry"),
        h("button", { type: "button", class: "danger discard", onclick: async () => {
          if (!await confirmAction(`Discard delivery ${d.id}? It will not be sent.`)) return;
          try {
            const done = await call("POST", "/api/deliveries/discard", { delivery_ids: [d.id] });
            notice.textContent = `${done.discarded} delivery discarded`;
            status.textContent = "discarded";
          } catch (error) { notice.textContent = error.message; }
        } }, "Discard"),
      ]);
    }
    return h("tr", { dataset: { delivery: d.id } },
      h("td", {}, h("a", { href: `#/message/${d.message_id}` }, `#${d.message_id}`)),
      h("td", {}, d.channel), h("td", {}, d.destination), h("td", {}, d.attempts),
      h("td", {}, when(d.updated_at)),
      h("td", { class: "why" }, [d.last_code, d.last_error].filter(Boolean).join(" "),
        response),
      status, actions);
  });
  show(h("h1", {}, "Failed syncs"), notice,
    deliveries.length ? table(["Message", "Channel", "Destination", "Attempts", "Failed at",
      "Why", "Status", ""], rows, { id: "failed" }) : h("p", {}, "No failed deliveries."),
    may("search") ? await openConflicts() : null);
}

// Appointment conflicts the engine flagged (double booking, out of order, unknown
// appointment...) and nobody has resolved yet; resolving one records who and how.
const RESOLUTIONS = [["accepted", "Accept"], ["corrected", "Corrected at source"],
  ["dismissed", "Dismiss"]];

async function openConflicts() {
  const { messages: flagged } = await call("POST", "/api/messages/search",
    { flagged: true, resolved: false, limit: 100 });
  const notice = h("p", { role: "status" });
  const rows = flagged.map((m) => {
    const state = h("td", { class: "status" }, "open");
    const actions = h("td", {});
    if (may("retry")) {
      append(actions, RESOLUTIONS.map(([outcome, label]) => h("button", {
        type: "button", class: `resolve-${outcome}`, onclick: async () => {
          if (!await confirmAction(`${label}: resolve the conflict of message ${m.id}?`)) return;
          try {
            await call("POST", `/api/conflicts/${m.id}/resolve`, { outcome });
            state.textContent = `resolved (${outcome})`;
            actions.replaceChildren();
          } catch (error) { notice.textContent = error.message; }
        } }, label)));
    }
    return h("tr", { dataset: { message: m.id } },
      h("td", {}, h("a", { href: `#/message/${m.id}` }, `#${m.id}`)),
      h("td", {}, m.keys.message_type), h("td", {}, when(m.received_at)), state, actions);
  });
  return h("section", { id: "conflicts" }, h("h2", {}, "Flagged conflicts"), notice,
    flagged.length ? table(["Message", "Type", "Received", "State", ""], rows)
      : h("p", {}, "No open conflicts."));
}

// -- message browser ---------------------------------------------------------------------

const FILTERS = [
  ["patient_id", "Patient id"], ["control_id", "Control id (MSH-10)"],
  ["appointment_id", "Appointment id"], ["message_type", "Message type (SIU^S12)"],
  ["channel", "Channel"], ["destination", "Destination"],
];
const CHOICES = {
  status: ["", "processed", "error", "rejected", "duplicate"],
  delivery_status: ["", "queued", "sent", "failed", "discarded"],
};

async function messages() {
  const form = h("form", { class: "filters card", id: "search" },
    FILTERS.map(([name, label]) => h("label", {}, label,
      h("input", { name, value: lastSearch[name] || "" }))),
    Object.entries(CHOICES).map(([name, options]) => h("label", {}, name.replace("_", " "),
      h("select", { name }, options.map((o) => h("option", { value: o,
        selected: lastSearch[name] === o }, o || "any"))))),
    h("label", {}, "Since", h("input", { name: "since", type: "datetime-local" })),
    h("label", {}, "Until", h("input", { name: "until", type: "datetime-local" })),
    h("button", { type: "submit" }, "Search"));
  const results = h("div", { id: "results" });
  const search = async (filters) => {
    const found = await call("POST", "/api/messages/search", filters);
    const rows = found.messages.map((m) => h("tr", {},
      h("td", {}, h("a", { href: `#/message/${m.id}` }, `#${m.id}`)),
      h("td", {}, when(m.received_at)), h("td", {}, m.keys.message_type),
      h("td", {}, m.keys.control_id), h("td", {}, m.keys.patient_ids.join(", ")),
      h("td", {}, m.status), h("td", {}, m.ack_code)));
    const more = found.next_before_id && h("button", { type: "button", onclick: () =>
      search({ ...filters, before_id: found.next_before_id }).catch(report) }, "Older");
    results.replaceChildren(rows.length ? table(["Message", "Received", "Type", "Control id",
      "Patients", "Status", "ACK"], rows) : h("p", {}, "No message matches."), more || "");
  };
  const report = (error) => results.replaceChildren(failure(error) || "");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const filters = {};
    for (const [name, value] of new FormData(form)) {
      if (!value) continue;
      filters[name] = name === "since" || name === "until"
        ? new Date(value).toISOString() : value;
    }
    lastSearch = filters;
    search(filters).catch(report);
  });
  show(h("h1", {}, "Messages"), form, results);
  await search(lastSearch);
}

// -- one message -------------------------------------------------------------------------

function hl7Tree(text) {
  return h("div", { class: "tree" }, parse(text).map((seg, index) =>
    h("details", { open: index < 1 ? true : null, dataset: { segment: seg.segment } },
      h("summary", {}, seg.segment),
      seg.fields.map((f) => h("div", { class: "field", dataset: { field: `${seg.segment}-${f.number}` } },
        h("span", { class: "name" }, `${seg.segment}-${f.number} ${f.name}: `), f.value,
        f.repetitions.some((r) => r.length > 1) ? h("ul", {}, f.repetitions.flatMap((r) =>
          r.map((c, i) => c && h("li", {}, `.${i + 1} ${c}`)))) : null)))));
}

function diffView(before, after) {
  const lines = diffLines(segmentsOf(before), segmentsOf(after));
  const changed = lines.filter(([kind]) => kind !== "same").length;
  return h("div", { class: "diff" },
    h("p", { class: "muted" }, changed ? `${changed} segment lines differ` : "no change"),
    lines.map(([kind, line]) => h("div", { class: kind },
      `${kind === "add" ? "+ " : kind === "del" ? "- " : "  "}${line}`)));
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

async function messagePage(id) {
  const detail = await call("GET", `/api/messages/${encodeURIComponent(id)}`);
  const m = detail.message;
  const hl7 = looksLikeHl7(detail.raw);
  const steps = detail.results.map((r) => h("section", { class: "card step",
    dataset: { channel: r.channel } },
    h("h3", {}, `Channel ${r.channel}: ${r.status}`),
    r.error ? h("p", { class: "error" }, `${r.error_step} ${r.error_location} ${r.error}`) : null,
    !r.output ? h("p", { class: "muted" }, "no output")
      : hl7 && looksLikeHl7(r.output) ? diffView(detail.raw, r.output)
        : h("pre", {}, pretty(r.output))));
  const deliveries = detail.deliveries.map((d) => h("tr", {},
    h("td", {}, d.id), h("td", {}, d.channel), h("td", {}, d.destination),
    h("td", { class: `status ${d.status}` }, d.status), h("td", {}, d.attempts.length),
    h("td", {}, d.attempts.length ? h("ul", {}, d.attempts.map((a) => h("li", {},
      `#${a.number} ${a.outcome} ${a.code} ${a.error} ${Math.round(a.latency * 1000)} ms `,
      a.response ? h("pre", {}, a.response) : null))) : "")));
  show(
    h("h1", {}, `Message #${m.id}`),
    h("p", {}, `${m.keys.message_type} ${m.keys.control_id} from ${m.keys.sender}, received `
      + `${when(m.received_at)} on ${m.listener}: ${m.status} (ACK ${m.ack_code || "none"})`),
    m.error ? h("p", { class: "error" }, m.error) : null,
    may("replay") ? replayPanel(m.id) : null,
    h("section", { class: "card" }, h("h2", {}, "Message"),
      hl7 ? hl7Tree(detail.raw) : h("pre", { id: "fhir" }, pretty(detail.raw))),
    detail.appointment ? h("section", { class: "card" }, h("h2", {}, "FHIR Appointment"),
      h("pre", { id: "fhir" }, pretty(detail.appointment.resource))) : null,
    h("h2", {}, "What each channel changed"), steps,
    h("h2", {}, "Deliveries"),
    table(["Id", "Channel", "Destination", "Status", "Attempts", "Tries"], deliveries,
      { id: "deliveries" }),
    detail.ack ? h("section", { class: "card" }, h("h2", {}, "ACK sent"), hl7Tree(detail.ack))
      : null,
    detail.replays.length ? h("p", {}, "Replayed as ", detail.replays.map((r) =>
      h("a", { href: `#/message/${r}` }, `#${r} `))) : null);
}

function replayPanel(id) {
  const out = h("div", { id: "replay-result" });
  const plansTable = (answer) => table(["Message", "Channel", "Destination", "Bytes"],
    answer.plans.flatMap((p) => p.sends.map((s) => h("tr", {},
      h("td", {}, p.replay_id ? h("a", { href: `#/message/${p.replay_id}` }, `#${p.replay_id}`)
        : `#${p.message_id}`),
      h("td", {}, s.channel), h("td", {}, s.destination), h("td", {}, s.bytes)))));
  const preview = async () => {
    try {
      const plan = await call("POST", "/api/replay", { message_ids: [id], dry_run: true });
      out.replaceChildren(h("p", {}, `Preview: ${plan.deliveries} deliveries would be sent`),
        plansTable(plan),
        h("button", { type: "button", id: "replay-confirm", onclick: async () => {
          if (!await confirmAction(`Replay message #${id}: send ${plan.deliveries} `
            + "deliveries?")) return;
          const done = await call("POST", "/api/replay", { message_ids: [id], dry_run: false });
          out.replaceChildren(h("p", { class: "ok" }, `Replayed: ${done.deliveries} `
            + "deliveries queued"), plansTable(done));
        } }, "Replay now"));
    } catch (error) {
      out.replaceChildren(failure(error) || "");
    }
  };
  return h("section", { class: "card" }, h("h2", {}, "Replay"),
    h("button", { type: "button", id: "replay", onclick: preview }, "Preview replay"), out);
}

// -- audit -------------------------------------------------------------------------------

async function audit() {
  const form = h("form", { class: "filters card", id: "audit-search" },
    h("label", {}, "User (user:NAME)", h("input", { name: "user" })),
    h("label", {}, "Patient id", h("input", { name: "patient" })),
    h("label", {}, "Action", h("select", { name: "action" },
      ["", "C", "R", "U", "D", "E"].map((a) => h("option", { value: a }, a || "any")))),
    h("button", { type: "submit" }, "Search"));
  const results = h("div", { id: "audit-results" });
  const search = async (filters) => {
    const { records } = await call("POST", "/api/audit/search", { ...filters, limit: 200 });
    results.replaceChildren(table(["When", "Who", "Role", "Action", "What", "Outcome",
      "Count"], records.map((r) => h("tr", {}, h("td", {}, when(r.recorded)),
      h("td", {}, r.who), h("td", {}, r.role), h("td", {}, r.action), h("td", {}, r.what),
      h("td", {}, r.outcome), h("td", {}, r.count ?? "")))));
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const filters = {};
    for (const [name, value] of new FormData(form)) if (value) filters[name] = value;
    search(filters).catch((e) => results.replaceChildren(failure(e) || ""));
  });
  show(h("h1", {}, "Audit trail"), form, results);
  await search({});
}

document.getElementById("logout").addEventListener("click", async () => {
  await logout().catch(() => {});
  me = null;
  drawLogin("Logged out.");
});
window.addEventListener("hashchange", route);
route();
