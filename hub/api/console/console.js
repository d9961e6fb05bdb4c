// Touchpoint Hub web console: views over the admin API, rendered in the browser.
//
// Event data is written by whoever sends events, so it is only ever put on the page as text: `el` builds
// elements and `Node.append` turns strings into text nodes. Nothing here parses HTML from a string.
// The token the user signs in with is kept in sessionStorage (this tab only, never a cookie) and sent as a
// bearer token on each call; cookies are never sent (credentials: "omit"), so no other site can act with it.

const TOKEN_KEY = "touchhub.console.token";
// The hub's root, wherever the console is served (a proxy may add a path prefix): API paths resolve against it.
const HUB_ROOT = new URL("../", window.location.href);
const DELIVERY_STATUSES = ["pending", "retrying", "sent", "delivered", "failed", "dead"];
const REPLAYABLE = new Set(["dead", "failed"]);
const PREVIEW_DELAY_MS = 400;

/** An answer of the admin API that was not a 2xx, with the lines of its error message. */
class ApiError extends Error {
  constructor(status, lines) {
    super(lines.join("\n"));
    this.status = status;
    this.lines = lines;
  }
}

// --- the token -------------------------------------------------------------------------------------------

function token() {
  return window.sessionStorage.getItem(TOKEN_KEY);
}

function signIn(value) {
  window.sessionStorage.setItem(TOKEN_KEY, value);
}

function forgetToken() {
  window.sessionStorage.removeItem(TOKEN_KEY);
}

// --- building the page ------------------------------------------------------------------------------------

/** An element with properties set from code (never from data) and children appended as nodes or text. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

/** How a value of the API's JSON reads in a cell: nothing is a dash, objects are compact JSON. */
function show(value) {
  if (value === null || value === undefined || value === "") {
    return "—";
  }
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** An ISO 8601 time from the API, to the second. */
function when(value) {
  return value ? String(value).replace("T", " ").replace(/\.\d+/, "") : "—";
}

/** Identifier pairs ([type, value], ...) as "type value" text. */
function pairs(list) {
  if (!Array.isArray(list)) {
    return show(list);
  }
  return list.map((pair) => (Array.isArray(pair) ? pair.join(" ") : show(pair))).join(", ");
}

function json(value) {
  return el("pre", { className: "json" }, JSON.stringify(value, null, 2));
}

function notice(kind, ...lines) {
  return el("div", { className: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    lines.flat().map((line) => el("p", {}, line)));
}

function section(title, ...content) {
  return el("section", { className: "panel" }, el("h2", {}, title), content);
}

function button(label, onclick, className = "") {
  return el("button", { type: "button", className, onclick }, label);
}

/** A link to another view of the console; `arg` (e.g. a profile id) is percent-encoded into the hash. */
function viewLink(view, arg, label = arg) {
  return el("a", { href: `#${view}/${encodeURIComponent(arg)}` }, label);
}

/** A status as a coloured label; the class is the status only when it is a plain word (statuses are data). */
function badge(status) {
  return el("span", { className: `badge ${word(status)}` }, show(status));
}

function word(value) {
  return /^[a-z_]+$/.test(String(value)) ? value : "other";
}

/** A table with one row per item; each column is [heading, item => string, number or Node]. */
function table(columns, rows, empty = "Nothing yet.") {
  if (!rows || rows.length === 0) {
    return el("p", { className: "empty" }, empty);
  }
  return tableFrame(columns.map(([heading]) => heading), el("tbody", {}, columnRows(columns)(rows)));
}

function tableFrame(headings, body) {
  return el("div", { className: "table-wrap" },
    el("table", {}, el("thead", {}, el("tr", {}, headings.map((heading) => el("th", { scope: "col" }, heading)))), body));
}

/** What builds the table rows of items, for `table` and `pagedTable`. */
function columnRows(columns) {
  return (items) => items.map((row) => tableRow(columns, row));
}

function tableRow(columns, row) {
  return el("tr", {}, columns.map(([, value]) => el("td", {}, cellOf(value(row)))));
}

/**
 * A table of one of the admin API's paged lists (answers `{<key>: [...], next_cursor}`) and, while older rows are
 * left, a "More" button under it. `page(cursor)` fetches a page with the filters the table was shown with (the
 * first without a cursor); More appends the rows of the page after the last one shown, built by `rowsOf(items)`,
 * and goes at the end of the list (a null `next_cursor`). A view whose filters change shows a new table, so it
 * starts over from the newest rows.
 */
async function pagedTable(page, key, headings, rowsOf, empty) {
  const first = await page(null);
  if (first[key].length === 0) {
    return el("p", { className: "empty" }, empty);
  }
  const body = el("tbody", {}, rowsOf(first[key]));
  let shown = first[key].length;
  let cursor = first.next_cursor;
  const said = el("div", { className: "muted" }, shownCount(shown, cursor));
  const foot = el("div", { className: "more" }, said);
  const more = button("More", async () => {
    more.disabled = true;  // one page at a time: a second click must not append the same page twice
    await fill(said, async () => {
      const answer = await page(cursor);
      body.append(...rowsOf(answer[key]).flat());
      shown += answer[key].length;
      cursor = answer.next_cursor;
      return shownCount(shown, cursor);
    });
    more.disabled = false;  // after a failure, to try again
    if (!cursor) {
      foot.replaceChildren(said);
    }
  });
  if (cursor) {
    foot.append(more);
  }
  return el("div", {}, tableFrame(headings, body), foot);
}

function shownCount(shown, cursor) {
  return cursor ? `${shown} shown, newest first; More shows older ones.` : `All ${shown} shown.`;
}

/** `pagedTable` of a table whose columns are [heading, item => value]. */
function pagedColumns(page, key, columns, empty) {
  return pagedTable(page, key, columns.map(([heading]) => heading), columnRows(columns), empty);
}

function cellOf(value) {
  return value instanceof Node ? value : show(value);
}

/** {name: count} as a two-column table. */
function counts(heading, mapping) {
  return table([[heading, ([name]) => name], ["Count", ([, count]) => count]], Object.entries(mapping || {}));
}

/** A form field: a label and its control. */
function field(label, control) {
  return el("label", { className: "field" }, el("span", {}, label), control);
}

// --- talking to the hub -----------------------------------------------------------------------------------

/** Call the admin API: `path` is a literal /api/... path (tests check each exists); empty query values are left out. */
async function api(method, path, { query = {}, body } = {}) {
  const url = new URL(path.slice(1), HUB_ROOT);
  for (const [name, value] of Object.entries(query)) {
    if (value !== "" && value !== null && value !== undefined) {
      url.searchParams.set(name, value);
    }
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${token()}` };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, [`The hub did not answer (${error.message}); is it running?`]);
  }
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, errorLines(response.status, answer));
  }
  return answer;
}

/** The lines of an error answer: FastAPI's `detail` (text, or a list of problems) or the ingest `error`. */
function errorLines(status, answer) {
  const heading = {
    401: "The hub refused the token (401)",
    403: "This token may not do that (403)",
  }[status] || `The hub answered ${status}`;
  return [heading, ...problemLines(answer)];
}

function problemLines(answer) {
  if (!answer || typeof answer !== "object") {
    return [];
  }
  if (answer.error !== undefined) {
    const refused = (answer.rejected || []).map((item) => `${itemOf(item.index)}${show(item.field)}: ${show(item.reason)}`);
    return [show(answer.error), ...refused];
  }
  const detail = answer.detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => (item && item.msg ? `${(item.loc || []).join(".")}: ${item.msg}` : show(item)));
  }
  return detail === undefined ? [] : [show(detail)];
}

/** Which item of a batch a problem is about, when the batch had several. */
function itemOf(index) {
  return index === null || index === undefined ? "" : `item ${index}: `;
}

/**
 * Run `work` and put what it builds into `target`; a failure shows its message there instead. A refused
 * token (401) signs out with the hub's message; a refused scope (403) only fails this view.
 */
async function fill(target, work) {
  try {
    target.replaceChildren(await work());
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut(error.lines);
      return;
    }
    target.replaceChildren(notice("error", error instanceof ApiError ? error.lines : [String(error)]));
  }
}

// --- views: each builds its content from the API -------------------------------------------------------------

async function overviewView() {
  const stats = await api("GET", "/api/stats");
  const figure = (label, value) => el("div", { className: "figure" }, el("span", {}, label), el("strong", {}, show(value)));
  return el("div", {},
    el("div", { className: "figures" },
      figure("Touchpoints", stats.touchpoints), figure("Profiles", stats.profiles), figure("Merges", stats.merges),
      figure("Quarantined", stats.quarantined)),
    section("Deliveries", table([
      ["Channel", (row) => row.channel], ["Status", (row) => badge(row.status)], ["Deliveries", (row) => row.count],
      ["Attempts", (row) => row.attempts],
    ], stats.deliveries)),
    section("Decisions by rule", counts("Rule", stats.decisions)),
    section("Inbox", counts("Status", stats.inbox)),
    section("Timers", counts("Status", stats.timers)));
}

async function sourcesView() {
  const { sources } = await api("GET", "/api/sources");
  return section("Sources", table([
    ["Id", (source) => source.id],
    ["Connector", (source) => el("span", {}, el("code", {}, source.connector), " ", source.title)],
    ["Mapping", (source) => `${source.mapping} (${source.mapping_version})`],
    ["Send events to", (source) => el("div", {},
      el("div", {}, "Webhooks: ", el("code", {}, `POST ${source.ingest_url}`)),
      source.sdk_ingest_url ? el("div", {}, "SDKs: ", el("code", {}, source.sdk_ingest_url)) : null)],
    ["", (source) => viewLink("mappings", source.id, "Preview its mapping")],
  ], sources, "No source is configured."));
}

// The mapping preview keeps what was typed while the user looks at other views.
const previewDraft = {
  sourceId: "default",
  sample: JSON.stringify(
    { type: "track", userId: "user-1", event: "Product Viewed", properties: { product_id: "sku-1", price: 19.99 } },
    null, 2),
  mapping: "",
  headers: "",
};
let previewRun = 0;

async function mappingsView(sourceId) {
  const { sources } = await api("GET", "/api/sources");
  if (sourceId) {
    previewDraft.sourceId = sourceId;
  }
  const picker = el("select", { name: "source" },
    sources.map((source) => el("option", { value: source.id, selected: source.id === previewDraft.sourceId },
      `${source.id} (${source.connector}, ${source.mapping})`)));
  const sample = el("textarea", { name: "sample", rows: 14, spellcheck: false, value: previewDraft.sample });
  const draft = el("textarea", {
    name: "mapping", rows: 10, spellcheck: false, value: previewDraft.mapping,
    placeholder: "Optional: a draft mapping as JSON (the YAML file's keys), tried instead of the active one",
  });
  const headers = el("textarea", {
    name: "headers", rows: 3, spellcheck: false, value: previewDraft.headers,
    placeholder: "Optional: one \"Name: value\" a line, e.g. webhook-id: msg_2Kx (a Standard Webhooks message id)",
  });
  const result = el("div", { className: "preview" });
  const typed = () => ({ sourceId: picker.value, sample: sample.value, mapping: draft.value, headers: headers.value });
  let timer;
  const later = () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => runPreview(typed(), result), PREVIEW_DELAY_MS);
  };
  for (const control of [picker, sample, draft, headers]) {
    control.addEventListener("input", later);
  }
  runPreview(typed(), result);
  return el("div", { className: "columns" },
    section("Sample", field("Source", picker), field("Payload, exactly as the platform sends it (JSON)", sample),
      field("Request headers the platform sends with it, where the source reads an id from one", headers),
      field("Draft mapping (JSON)", draft)),
    section("Preview (nothing is stored)", result));
}

/** Preview one sample; a slower answer to an older edit never replaces a newer one. */
async function runPreview(typed, result) {
  Object.assign(previewDraft, typed);
  const run = ++previewRun;
  const parsed = parseJson("Payload", typed.sample);
  const mapping = typed.mapping.trim() ? parseJson("Draft mapping", typed.mapping) : { value: undefined };
  const headers = parseHeaders(typed.headers);
  const wrong = [parsed.error, mapping.error, ...headers.errors].filter(Boolean);
  if (wrong.length) {
    result.replaceChildren(notice("error", wrong));
    return;
  }
  const body = { sample: parsed.value, mapping: mapping.value, headers: headers.value };
  const shown = el("div", {});
  await fill(shown, async () => previewOutcomes(await api(
    "POST", `/api/mappings/${encodeURIComponent(typed.sourceId)}/preview`, { body })));
  if (run === previewRun) {
    result.replaceChildren(shown);
  }
}

/**
 * The headers box, one "Name: value" a line, as the preview's `headers` object; none (left out of the request)
 * when the box is empty. Built with Object.fromEntries, so a header named __proto__ is a header like any other.
 */
function parseHeaders(text) {
  const errors = [];
  const entries = [];
  text.split("\n").forEach((typed, index) => {
    const line = typed.trim();
    const colon = line.indexOf(":");
    if (line && colon < 1) {
      errors.push(`Headers, line ${index + 1}: "${line}" is no header; write its name, a colon, then its value`);
    } else if (line) {
      entries.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
    }
  });
  return { errors, value: entries.length ? Object.fromEntries(entries) : undefined };
}

function parseJson(what, text) {
  try {
    return { value: JSON.parse(text) };
  } catch (error) {
    return { error: `${what}: not valid JSON (${error.message})` };
  }
}

function previewOutcomes(answer) {
  return el("div", {},
    el("p", { className: "muted" }, `Mapping ${answer.mapping_version}: ${answer.outcomes.length} event(s)`),
    answer.outcomes.map((outcome) => el("article", { className: `outcome ${word(outcome.outcome)}` },
      el("h3", {}, `Event ${outcome.index}: `, badge(outcome.outcome)),
      outcome.reason ? el("p", {}, outcome.reason) : null,
      outcome.touchpoint ? touchpointFacts(outcome.touchpoint) : null,
      outcome.touchpoint ? json(outcome.touchpoint) : null)));
}

function touchpointFacts(touchpoint) {
  return el("dl", { className: "facts" },
    [["Event", touchpoint.event], ["Stage", touchpoint.stage], ["Moment", touchpoint.moment],
      ["Occurred", when(touchpoint.occurred_at)], ["Identifiers", touchpoint.identifiers]]
      .map(([term, value]) => [el("dt", {}, term), el("dd", {}, show(value))]));
}

async function triggersView() {
  const { rules, refused_edit: refused, refused_template_edits: refusedTemplates } = await api("GET", "/api/rules");
  return el("div", {},
    refusal("The last edit of triggers.yaml was refused; the rules below stay in force until it is fixed:", refused),
    refusal("An edit of a template these rules send was refused; its last good version is sent until it is fixed:",
      refusedTemplates),
    section("Trigger rules in force", table([
      ["Rule", (rule) => el("span", {}, el("strong", {}, rule.id), el("div", { className: "muted" }, rule.version))],
      ["Priority", (rule) => rule.priority],
      ["Urgency", (rule) => (rule.waits ? `${rule.urgency} (waits for an absence)` : rule.urgency)],
      ["Channels", (rule) => rule.channels.join(", ")],
      ["Description", (rule) => rule.description],
    ], rules, "No rule is in force.")));
}

/** A warning with why an edit was refused (one problem or a list of them), or nothing when none was. */
function refusal(heading, problems) {
  const lines = [].concat(problems || []);
  return lines.length ? notice("warning", heading, lines) : null;
}

// The deliveries' filters, kept across views; "#deliveries/<profile id>" sets the profile.
const deliveryFilters = { status: "", channel: "", destination: "", profile_id: "", limit: "100" };

async function deliveriesView(profileId) {
  if (profileId) {
    deliveryFilters.profile_id = profileId;
  }
  const controls = {
    status: el("select", { name: "status" }, el("option", { value: "" }, "any"),
      DELIVERY_STATUSES.map((status) => el("option", { value: status }, status === "dead" ? "dead (DLQ)" : status))),
    channel: el("input", { name: "channel", placeholder: "sms, email, push, crm…" }),
    destination: el("input", { name: "destination", placeholder: "twilio_sms…" }),
    profile_id: el("input", { name: "profile_id", placeholder: "profile id" }),
    limit: el("input", { name: "limit", type: "number", min: 1, max: 1000 }),
  };
  for (const [name, control] of Object.entries(controls)) {
    control.value = deliveryFilters[name];
  }
  const status = el("div", {});
  const list = el("div", {});
  const load = () => {
    for (const [name, control] of Object.entries(controls)) {
      deliveryFilters[name] = control.value.trim();
    }
    const query = { ...deliveryFilters };  // More pages with these, though the fields are edited meanwhile
    return fill(list, () => deliveryTable((cursor) => api("GET", "/api/deliveries", { query: { ...query, cursor } }), status, load));
  };
  const form = el("form", { className: "filters", onsubmit: (event) => { event.preventDefault(); load(); } },
    field("Status", controls.status), field("Channel", controls.channel), field("Destination", controls.destination),
    field("Profile", controls.profile_id), field("Per page", controls.limit), el("button", { type: "submit" }, "Show"));
  await load();
  return section("Deliveries and dead-letter queue", form, status, list);
}

function deliveryTable(page, status, reload) {
  const headings = ["Planned", "Status", "Channel", "Destination", "To", "Attempts", "Last error", ""];
  const rowsOf = (deliveries) => deliveries.map((delivery) => deliveryRows(delivery, headings.length, status, reload));
  return pagedTable(page, "deliveries", headings, rowsOf, "No delivery matches.");
}

/** A delivery's row, and below it its attempt log, shown on demand. */
function deliveryRows(delivery, width, status, reload) {
  const log = el("tr", { className: "detail", hidden: true }, el("td", { colSpan: width }, attemptLog(delivery)));
  const actions = el("td", { className: "actions" },
    button("Attempts", () => { log.hidden = !log.hidden; }),
    REPLAYABLE.has(delivery.status) ? button("Replay", (event) => replay(delivery, event.target, status, reload), "primary") : null);
  const row = el("tr", {},
    [when(delivery.created_at), badge(delivery.status), delivery.channel, delivery.destination_id, delivery.target,
      delivery.attempts, delivery.last_error].map((value) => el("td", {}, cellOf(value))),
    actions);
  return [row, log];
}

function attemptLog(delivery) {
  return el("div", {},
    el("dl", { className: "facts" },
      el("dt", {}, "Delivery"), el("dd", {}, delivery.delivery_id),
      el("dt", {}, "Profile"), el("dd", {}, delivery.profile_id ? viewLink("profiles", delivery.profile_id) : "—"),
      el("dt", {}, "Decision"), el("dd", {}, show(delivery.decision_id)),
      el("dt", {}, "Provider status"), el("dd", {}, show(delivery.provider_status)),
      el("dt", {}, "Replayed"), el("dd", {}, delivery.replayed
        ? `${when(delivery.replayed.at)}, after attempt ${delivery.replayed.after_attempt}` : "—")),
    table([
      ["#", (attempt) => attempt.attempt_no], ["Started", (attempt) => when(attempt.started_at)],
      ["ms", (attempt) => attempt.duration_ms], ["Outcome", (attempt) => badge(attempt.outcome)],
      ["Error", (attempt) => (attempt.error_class ? `${attempt.error_class}: ${show(attempt.error_message)}` : "—")],
      ["Provider id", (attempt) => attempt.provider_message_id],
      ["Request", (attempt) => attempt.request_summary], ["Response", (attempt) => attempt.response_summary],
    ], delivery.attempt_log, "No attempt yet."),
    el("details", {}, el("summary", {}, "Content sent"), json(delivery.content)));
}

async function replay(delivery, control, status, reload) {
  if (!window.confirm(`Send delivery ${delivery.delivery_id} (${delivery.channel}) again?`)) {
    return;
  }
  control.disabled = true;
  await fill(status, async () => {
    const answer = await api("POST", `/api/deliveries/${encodeURIComponent(delivery.delivery_id)}/replay`);
    return notice("ok", `Delivery ${answer.delivery_id} was ${answer.previous_status}; it is ${answer.status} again.`);
  });
  await reload();
}

// The identifier types of the lookup form, read once.
let identifierTypes;

async function profilesView(profileId) {
  identifierTypes = identifierTypes || (await api("GET", "/api/identifier-types")).identifier_types;
  const type = el("select", { name: "type" }, identifierTypes.map((each) => el("option", { value: each.type }, each.type)));
  const value = el("input", { name: "value", required: true, placeholder: "e.g. ana@example.com" });
  const id = el("input", { name: "profile_id", required: true, placeholder: "profile id", value: profileId || "" });
  const result = el("div", {});
  const byIdentifier = el("form", { className: "filters", onsubmit: (event) => {
    event.preventDefault();
    fill(result, async () => profileDetails(await api("GET", "/api/profiles/lookup", { query: { type: type.value, value: value.value } })));
  } }, field("Identifier type", type), field("Value", value), el("button", { type: "submit" }, "Find"));
  const byId = el("form", { className: "filters", onsubmit: (event) => {
    event.preventDefault();
    window.location.hash = `#profiles/${encodeURIComponent(id.value.trim())}`;
  } }, field("Profile id", id), el("button", { type: "submit" }, "Open"));
  if (profileId) {
    await fill(result, async () => profileDetails(await api("GET", `/api/profiles/${encodeURIComponent(profileId)}`)));
  }
  return el("div", {}, section("Find a profile", byIdentifier, byId), result);
}

/** A profile: traits and identifiers, its timeline of touchpoints and its identity graph. */
async function profileDetails(profile) {
  const timelineQuery = { profile_id: profile.profile_id, limit: 200, order: "occurred" };
  const [timeline, graph] = await Promise.all([
    pagedColumns((cursor) => api("GET", "/api/touchpoints", { query: { ...timelineQuery, cursor } }), "touchpoints", [
      ["Occurred", (touchpoint) => when(touchpoint.occurred_at)], ["Event", (touchpoint) => touchpoint.event],
      ["Stage", (touchpoint) => touchpoint.stage], ["Moment", (touchpoint) => touchpoint.moment],
      ["Source", (touchpoint) => touchpoint.source_id], ["Identifiers", (touchpoint) => pairs(touchpoint.identifiers)],
      ["Data", (touchpoint) => el("details", {}, el("summary", {}, "properties, traits, context"),
        json({ properties: touchpoint.properties, traits: touchpoint.traits, context: touchpoint.context }))],
    ], "No touchpoint."),
    api("GET", `/api/profiles/${encodeURIComponent(profile.profile_id)}/explain`),
  ]);
  return el("div", {},
    section(`Profile ${profile.profile_id}`,
      el("dl", { className: "facts" },
        el("dt", {}, "Created"), el("dd", {}, when(profile.created_at)),
        el("dt", {}, "Updated"), el("dd", {}, when(profile.updated_at)),
        el("dt", {}, "Merged into it"), el("dd", {}, show(profile.merged_profile_ids.join(", ")))),
      viewLink("deliveries", profile.profile_id, "Its deliveries"),
      el("h3", {}, "Traits"),
      table([["Trait", ([name]) => name], ["Value", ([, trait]) => trait]], Object.entries(profile.traits || {}), "No traits."),
      el("h3", {}, "Identifiers"),
      table([["Type", ([kind]) => kind], ["Values, newest first", ([, values]) => values.join(", ")]],
        Object.entries(profile.identifiers || {}), "No identifiers.")),
    section("Timeline (newest first, by when each event occurred)", timeline),
    identityGraph(graph));
}

function identityGraph(graph) {
  const audit = (entries, empty) => table([
    ["At", (entry) => when(entry.at)], ["Identifiers", (entry) => pairs(entry.identifiers)], ["Rule", (entry) => entry.rule],
    ["Other profile", (entry) => (entry.other_profile_id ? viewLink("profiles", entry.other_profile_id) : "—")],
    ["Touchpoint", (entry) => entry.touchpoint_id],
  ], entries, empty);
  return section("Identity graph",
    el("p", { className: "muted" }, graph.aliases && graph.aliases.length
      ? `Merged in (these ids still lead here): ${graph.aliases.join(", ")}` : "No profile was merged into this one."),
    el("h3", {}, "Identifiers and why each joined"),
    table([
      ["Identifier", (member) => `${member.type} ${member.value}`], ["First seen", (member) => when(member.first_seen_at)],
      ["Why", (member) => member.why], ["Came from profile", (member) => member.origin_profile_id],
    ], graph.identifiers, "No identifiers."),
    el("h3", {}, "Links"),
    table([
      ["From", (link) => pairs([link.from])], ["To", (link) => pairs([link.to])], ["Why", (link) => link.why],
      ["Touchpoint", (link) => link.touchpoint_id],
    ], graph.links, "No links: one identifier, or each came alone."),
    el("h3", {}, "Merges"),
    table([
      ["Merged", (merge) => when(merge.merged_at)], ["Profile merged in", (merge) => merge.merged_profile_id],
      ["Linked by", (merge) => pairs(merge.linking_identifiers)], ["Rule", (merge) => merge.rule],
      ["Touchpoint", (merge) => merge.touchpoint_id],
    ], graph.merges, "No merge."),
    el("h3", {}, "Links refused"), audit(graph.refused, "No link was refused."),
    el("h3", {}, "Merges undone"), audit(graph.unmerges, "No merge was undone."),
    el("h3", {}, "Identifiers taken off"), audit(graph.detached, "No identifier was taken off."),
    el("h3", {}, "Moved with a device to whoever signed in on it"),
    table([
      ["At", (entry) => when(entry.at)], ["Identifiers", (entry) => pairs(entry.identifiers)],
      ["From profile", (entry) => viewLink("profiles", entry.other_profile_id)],
      ["To profile", (entry) => viewLink("profiles", entry.profile_id)], ["Touchpoint", (entry) => entry.touchpoint_id],
    ], graph.moved, "No identifier moved."));
}

async function quarantineView() {
  const list = el("div", {});
  const load = () => fill(list, quarantineTable);
  const [{ sources }] = await Promise.all([api("GET", "/api/sources"), load()]);
  return el("div", {},
    reprocessForm(sources, load),
    section("Quarantine: refused bodies and items, newest first", list));
}

function quarantineTable() {
  return pagedColumns((cursor) => api("GET", "/api/quarantine", { query: { limit: 200, cursor } }), "quarantine", [
    ["Received", (row) => when(row.received_at)], ["Source", (row) => row.source_id], ["Stage", (row) => row.stage],
    ["Reason", (row) => row.reason],
    ["Problems", (row) => (row.problems || []).map((problem) => show(problem)).join("; ")],
    ["Replayed", (row) => when(row.replayed_at)],
    ["Body", (row) => rawBody(row)],
  ], "Nothing is quarantined.");
}

/**
 * After a mapping fix: a source's stored events mapped again, what was quarantined sent through the pipeline.
 * `reload` shows the quarantine again once a replay went, so its entries read when they were replayed.
 */
function reprocessForm(sources, reload) {
  const source = el("select", { name: "source" }, sources.map((each) => el("option", { value: each.id }, each.id)));
  const since = el("input", { name: "since", required: true, value: "24h", placeholder: "24h or 2026-11-20T00:00Z" });
  const result = el("div", {});
  const form = el("form", { className: "filters", onsubmit: (event) => {
    event.preventDefault();
    if (!window.confirm(`Map the events ${source.value} sent since ${since.value} again with its current mapping?`)) {
      return;
    }
    fill(result, async () => {
      const report = await api("POST", `/api/sources/${encodeURIComponent(source.value)}/replay`, { query: { since: since.value } });
      await reload();
      return notice("ok",
        `Re-processing (were quarantined or dropped): ${report.requeued}; rewritten: ${report.rewritten}; `
          + `already current: ${report.unchanged}; dropped by a rule: ${report.dropped}; still unmappable: ${report.unmappable}.`,
        report.available_at ? `The pipeline takes the re-processed events at ${when(report.available_at)}, once every hub has the mapping.` : [],
        Object.entries(report.errors).map(([error, count]) => `${count} x ${error}`));
    });
  } }, field("Source", source), field("Since", since), el("button", { type: "submit" }, "Re-process"));
  return section("Re-process after a mapping fix", form, result);
}

/** A quarantined body: the list has only its start (bodies may be large and many), a button fetches it whole,
 * another saves the bytes as sent (the text replaces those its encoding has no character for). */
function rawBody(row) {
  const shown = el("div", {}, el("pre", { className: "json" }, row.raw_body));
  const saved = el("span", {});
  const more = el("p", { className: "muted" }, row.raw_body_cut ? "Only its start is shown. " : "",
    row.raw_body_cut ? button("Load the whole body", () => fill(shown, () => wholeBody(row.id))) : null,
    button("Download the bytes as sent", () => fill(saved, () => downloadBody(row.id))), saved);
  return el("details", {}, el("summary", {}, `${row.content_type || "body"}, ${row.raw_body_bytes} bytes`), more, shown);
}

function quarantined(quarantineId) {
  return api("GET", `/api/quarantine/${encodeURIComponent(quarantineId)}`);
}

async function wholeBody(quarantineId) {
  const { raw_body: body } = await quarantined(quarantineId);
  return el("pre", { className: "json" }, body);
}

/** The body's exact bytes (`raw_body_base64`) saved as a file, from memory: no URL of the hub carries them. */
async function downloadBody(quarantineId) {
  const { raw_body_base64: encoded } = await quarantined(quarantineId);
  const bytes = Uint8Array.from(atob(encoded), (character) => character.charCodeAt(0));
  const link = el("a", { href: URL.createObjectURL(new Blob([bytes])), download: `quarantine-${quarantineId}.bin` });
  link.click();
  window.setTimeout(() => URL.revokeObjectURL(link.href), 60_000);  // once the browser has read it
  return `Saved quarantine-${quarantineId}.bin (${bytes.length} bytes).`;
}

// --- the frame: sign-in, tabs, routing --------------------------------------------------------------------

const VIEWS = {
  overview: overviewView,
  sources: sourcesView,
  mappings: mappingsView,
  triggers: triggersView,
  deliveries: deliveriesView,
  profiles: profilesView,
  quarantine: quarantineView,
};
let shownRun = 0;

/** The view and its argument from the location's hash: "#profiles/<id>". */
function currentRoute() {
  const [name, ...rest] = window.location.hash.slice(1).split("/");
  let arg = rest.join("/");
  try {
    arg = decodeURIComponent(arg);
  } catch {
    arg = "";
  }
  return { name: Object.hasOwn(VIEWS, name) ? name : "overview", arg };
}

async function route() {
  const signedIn = Boolean(token());
  document.getElementById("sign-in").hidden = signedIn;
  document.getElementById("tabs").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  const view = document.getElementById("view");
  if (!signedIn) {
    view.replaceChildren();
    document.getElementById("token").focus();
    return;
  }
  const { name, arg } = currentRoute();
  for (const tab of document.querySelectorAll("#tabs a")) {
    tab.classList.toggle("active", tab.getAttribute("href") === `#${name}`);
  }
  const run = ++shownRun;
  const shown = el("div", {});
  view.replaceChildren(el("p", { className: "muted" }, "Loading…"));
  await fill(shown, () => VIEWS[name](arg));
  if (run === shownRun && token()) {
    view.replaceChildren(shown);
  }
}

/** Forget the token and show the sign-in form, with why when the hub refused it. */
function signOut(lines = []) {
  forgetToken();
  const message = document.getElementById("sign-in-error");
  message.replaceChildren(...lines.map((line) => el("span", {}, line, el("br"))));
  message.hidden = lines.length === 0;
  route();
}

function start() {
  document.getElementById("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    signIn(input.value.trim());
    input.value = "";
    document.getElementById("sign-in-error").hidden = true;
    route();
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  route();
}

start();
