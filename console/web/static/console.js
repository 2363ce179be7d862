// The control room's web console: log in, the banner (who leads, epoch, standby lag,
// freshness), the live city map with an asset's details on click, the alarm list handled
// from the keyboard. No build step: ES modules from
// /static and /vendor (the import map in index.html). Tokens live in memory only.
import { h, render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";
import { rpc } from "/static/api.js";
import { openEvents } from "/static/events.js";
import { CityMap } from "/static/citymap.js";
import { Approvals, CommandDialog, RecentCommands, groupsOf } from "/static/commands.js";
import { Health } from "/static/health.js";
import { Incidents, Tasks } from "/static/work.js";

const html = htm.bind(h);
const RENEW_BEFORE_MS = 60_000;

// What tests and the wall read: ready, leader, epoch, lastEventId, events, alarms shown.
const exposed = (window.__console = { ready: false, leader: null, epoch: 0, lastEventId: null, events: 0 });

function Login({ onSession }) {
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  async function submit(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    setBusy(true);
    setError("");
    try {
      onSession(await rpc("AuthService/Login", {
        user: form.get("user"), password: form.get("password"), otp: form.get("otp") || "",
      }));
    } catch (e) {
      setError(e.message);
    } finally {
      setBusy(false);
    }
  }
  return html`
    <form class="login" onSubmit=${submit} aria-labelledby="login-title">
      <h2 id="login-title">Log in</h2>
      <label>User <input name="user" autocomplete="username" required autofocus /></label>
      <label>Password <input name="password" type="password" autocomplete="current-password" required /></label>
      <label>One-time code (if your role needs one) <input name="otp" inputmode="numeric" autocomplete="one-time-code" /></label>
      <button type="submit" disabled=${busy}>Log in</button>
      ${error && html`<p class="error" role="alert">${error}</p>`}
    </form>`;
}

function Banner({ posts, fresh, session, onLogout }) {
  const leader = posts && posts.leader;
  const others = posts ? posts.posts.filter((p) => p.role !== "leader") : [];
  const failover = posts && !leader;
  const state = !posts ? "connecting" : failover ? "failover" : "live";
  return html`
    <header class=${`banner banner-${state}`} role="status" aria-live="polite">
      <span class="lead">${
        state === "connecting" ? "Connecting to the posts…"
        : failover ? "FAILOVER: no post leads; commands are disabled until one does"
        : `Leading: ${leader} · epoch ${posts.epoch}`}</span>
      ${others.map((p) => html`<span>${p.role === "standby"
        ? `Standby ${p.post}: ${p.lag_revisions == null ? "lag unknown" : `${p.lag_revisions} revisions behind`}`
        : `${p.post || p.address}: not answering`}</span>`)}
      <span>Data ${fresh == null ? "not yet received" : `${fresh} s old`}</span>
      <span class="who">${session.user} (${session.roles.join(", ")})</span>
      <button onClick=${onLogout}>Log out</button>
    </header>`;
}

const SEVERITY = { CRITICAL: 1, MAJOR: 2, MINOR: 3, WARNING: 4, INFO: 5 };

// EEMUA 191: ten alarms in ten minutes is a flood; the list then groups them by place and
// type, so the operator sees the situation, not a scroll of rows.
const FLOOD_COUNT = 10;
const FLOOD_WINDOW_MS = 600_000;

// What the list annunciates: not shelved now, not suppressed under a cause, not over.
function annunciated(alarm, now) {
  return alarm.state !== "CLEARED_ACK" && !alarm.suppressed_by && !(Number(alarm.shelved_until_ms || 0) > now);
}

function Alarms({ alarms, token, leading, placeOf }) {
  const [at, setAt] = useState(0);
  const [open, setOpen] = useState(null);
  const [message, setMessage] = useState("");
  const now = Date.now();
  const all = [...alarms.values()];
  const shown = all.filter((a) => annunciated(a, now)).sort(
    (a, b) => (SEVERITY[a.severity] || 9) - (SEVERITY[b.severity] || 9) || Number(b.raised_at_ms || 0) - Number(a.raised_at_ms || 0));
  const recent = shown.filter((a) => now - Number(a.raised_at_ms || 0) < FLOOD_WINDOW_MS).length;
  const flood = recent >= FLOOD_COUNT;
  const shelved = all.filter((a) => a.state !== "CLEARED_ACK" && Number(a.shelved_until_ms || 0) > now).length;
  const suppressed = all.filter((a) => a.state !== "CLEARED_ACK" && a.suppressed_by).length;
  // Flood: one row per (place, type), its alarms listed under it when opened.
  const rows = flood ? groupRows(shown, placeOf, open) : shown.map((a) => ({ alarm: a }));

  async function act(verb, alarm, extra) {
    try {
      await rpc(`OperatorService/${verb}`, { idempotency_key: crypto.randomUUID(), alarm_id: alarm.alarm_id, ...extra }, token());
      setMessage(`${verb} ${alarm.alarm_id}: done`);
    } catch (e) {
      setMessage(`${verb} ${alarm.alarm_id}: ${e.message}`);
    }
  }
  function onKey(event) {
    const row = rows[at];
    if (event.key === "j") setAt(Math.min(at + 1, rows.length - 1));
    else if (event.key === "k") setAt(Math.max(at - 1, 0));
    else if (!row) return;
    else if (event.key === "Enter" && row.group) setOpen(open === row.key ? null : row.key);
    else if (!leading) return;
    else if (row.group) {
      // On a group: acknowledge every alarm of it that waits for one.
      if (event.key === "a") row.group.filter((a) => a.state.endsWith("UNACK")).forEach((a) => act("AcknowledgeAlarm", a, {}));
    } else if (event.key === "a") act("AcknowledgeAlarm", row.alarm, {});
    else if (event.key === "c") act("ClearAlarm", row.alarm, {});
    else if (event.key === "s") {
      const reason = prompt("Shelve: the reason");
      const minutes = Number(prompt("Shelve: for how many minutes", "30"));
      if (reason && minutes > 0) act("ShelveAlarm", row.alarm, { reason, minutes });
    }
  }
  return html`
    <section class="alarms" aria-labelledby="alarms-title">
      <h2 id="alarms-title">Alarms (${shown.length})${flood ? html` <span class="flood">FLOOD: ${recent} in 10 min, grouped by place and type</span>` : ""}</h2>
      <p class="keys">j / k move · a acknowledge · s shelve · c clear${flood ? " · Enter opens a group" : ""}${leading ? "" : " (disabled: no post leads)"}
        · ${shelved} shelved · ${suppressed} suppressed under a cause</p>
      <table tabindex="0" onKeyDown=${onKey} aria-label="Alarms, most severe first">
        <thead><tr><th>Severity</th><th>Type</th><th>Asset</th><th>State</th><th>Detail</th></tr></thead>
        <tbody>${rows.map((r, i) => r.group ? html`
          <tr key=${r.key} class=${`${i === at ? "selected " : ""}group sev-${r.severity.toLowerCase()}`} aria-selected=${i === at} aria-expanded=${open === r.key}>
            <td>${SEVERITY[r.severity] || "?"} ${r.severity}</td><td>${r.type}</td><td>${r.place}</td>
            <td>${r.group.length} alarms, ${r.group.filter((a) => a.state.endsWith("UNACK")).length} unacknowledged</td><td>${open === r.key ? "▾" : "▸"}</td></tr>` : html`
          <tr key=${r.alarm.alarm_id} class=${`${i === at ? "selected " : ""}${r.member ? "member " : ""}sev-${(r.alarm.severity || "").toLowerCase()}`} aria-selected=${i === at}>
            <td>${SEVERITY[r.alarm.severity] || "?"} ${r.alarm.severity}</td><td>${r.alarm.type}${r.alarm.chattering ? " (chattering)" : ""}</td>
            <td>${r.alarm.originator}</td><td>${r.alarm.state}</td>
            <td>${r.alarm.detail || ""}${r.alarm.suppressed_count ? ` · ${r.alarm.suppressed_count} suppressed under it` : ""}</td></tr>`)}
        </tbody>
      </table>
      ${message && html`<p role="status">${message}</p>`}
    </section>`;
}

function groupRows(shown, placeOf, open) {
  const groups = new Map();
  for (const alarm of shown) {
    const place = placeOf(alarm);
    const key = `${place}\u0000${alarm.type}`;
    if (!groups.has(key)) groups.set(key, { key, place, type: alarm.type, severity: alarm.severity, group: [] });
    groups.get(key).group.push(alarm); // `shown` is most severe first: the first sets the row's
  }
  const rows = [];
  for (const g of groups.values()) {
    rows.push(g);
    if (open === g.key) for (const alarm of g.group) rows.push({ alarm, member: true });
  }
  return rows;
}

function AssetDetails({ eui, token, alarms, commands, onClose }) {
  const [asset, setAsset] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    setAsset(null);
    setError("");
    rpc("OperatorService/GetAsset", { dev_eui: eui }, token()).then(setAsset, (e) => setError(e.message));
  }, [eui]);
  const mine = [...alarms.values()].filter((a) => a.originator === eui);
  const t = asset && asset.last_telemetry;
  const reading = t && Object.entries(t).find(([k]) => !["dev_eui", "asset_class", "group", "observed_at_ms",
    "received_at_ms", "f_cnt", "rssi", "snr", "gateway_id"].includes(k));
  return html`
    <aside class="asset" aria-labelledby="asset-title">
      <h2 id="asset-title">${asset ? asset.name : eui}</h2>
      <button onClick=${onClose} aria-label="Close the asset's details">Close</button>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      ${asset && html`<dl>
        <dt>devEui</dt><dd>${asset.dev_eui}</dd>
        <dt>Class · group</dt><dd>${asset.asset_class} · ${asset.group} (${asset.commune})</dd>
        <dt>Override</dt><dd>${asset.overridden ? "an operator's override holds its group" : "none"}</dd>
        <dt>Last reading</dt><dd>${t ? html`${new Date(Number(t.observed_at_ms || t.received_at_ms)).toLocaleString()}
          <pre>${reading ? JSON.stringify(reading[1], null, 1) : ""}</pre>` : "nothing heard yet"}</dd>
        <dt>Radio</dt><dd>${t && t.gateway_id ? `gateway ${t.gateway_id}, RSSI ${t.rssi} dBm, SNR ${t.snr} dB, fCnt ${t.f_cnt}` : t ? "IP" : "–"}</dd>
        <dt>Alarms</dt><dd>${mine.length ? mine.map((a) => html`<div>${a.severity} ${a.type}: ${a.state}</div>`) : "none"}</dd>
        <dt>Operators' commands</dt><dd>${(() => {
          const about = [...commands.values()].filter((c) => c.command.target.dev_eui === eui
            || (c.command.target.group === asset.group && c.command.asset_class === asset.asset_class));
          return about.length ? about.slice(-5).map((c) => html`<div>${c.issued_by}: ${c.status}</div>`) : "none seen this session";
        })()}</dd>
      </dl>`}
    </aside>`;
}

// The room, from the page's start: before a login, the map's base and the login form
// beside it (the map is drawn while the operator types, and stays the same element
// across the login); with a session, the banner, the map's data and every panel. A
// logout empties everything the session brought.
function Room({ session, setSession }) {
  const live = Boolean(session);
  const [posts, setPosts] = useState(null);
  const [alarms, setAlarms] = useState(new Map());
  const [lastAt, setLastAt] = useState(null);
  const [now, setNow] = useState(Date.now());
  const [selected, setSelected] = useState(null);
  const [groups, setGroups] = useState(null);
  const communeOf = useRef(new Map());
  // Where an alarm is: its device's commune (from the map's rows), else its group.
  const placeOf = (alarm) => communeOf.current.get(alarm.originator) || alarm.group || alarm.originator;
  function columns(cols) {
    setGroups(groupsOf(cols));
    communeOf.current = new Map(cols.eui.map((eui, i) => [eui, cols.communes[cols.com[i]]]));
  }
  const [commands, setCommands] = useState(new Map());
  const [incidents, setIncidents] = useState(new Map());
  const [tasks, setTasks] = useState(new Map());
  // The stream and the handlers outlive a renewal: they read the current token here.
  const current = useRef(null);
  current.current = session && session.access_token;
  const token = () => current.current;
  exposed.token = token;

  async function readAlarms() {
    const reply = await rpc("OperatorService/ListAlarms", { page_size: 1000 }, token());
    setAlarms(new Map((reply.alarms || []).map((a) => [a.alarm_id, a])));
  }

  // What the room reads afresh on a resync (a new stream, a new leader); events follow.
  async function readWork() {
    const [pending, open, work] = await Promise.all([
      rpc("OperatorService/ListCommands", { status: "PENDING_APPROVAL", page_size: 1000 }, token()),
      rpc("OperatorService/ListIncidents", { open_only: true, page_size: 1000 }, token()),
      rpc("OperatorService/ListTasks", { statuses: ["OPEN", "ASSIGNED", "IN_PROGRESS"], page_size: 1000 }, token()),
    ]);
    setCommands((old) => {
      const next = new Map([...old].filter(([, c]) => c.status !== "PENDING_APPROVAL"));
      for (const c of pending.commands || []) next.set(c.command.command_id, c);
      return next;
    });
    setIncidents(new Map((open.incidents || []).map((i) => [i.incident_id, i])));
    setTasks(new Map((work.tasks || []).map((t) => [t.task_id, t])));
  }

  function seen(id) {
    exposed.lastEventId = id;
    exposed.events += 1;
  }

  useEffect(() => {
    if (!live) return undefined;
    const stream = openEvents(token, {
      posts(data) {
        if (exposed.firstPostsAt == null) exposed.firstPostsAt = performance.now();
        setPosts(data);
        setLastAt(Date.now());
        exposed.leader = data.leader;
        exposed.epoch = data.epoch;
      },
      resync() {
        readAlarms().catch(() => {});
        readWork().catch(() => {});
      },
      command(data, id) {
        seen(id);
        const c = data.command;
        // The policies' own commands (bus priority, schedules) are many: the room follows
        // the operators' and anything waiting for approval.
        if ((c.issued_by || "").startsWith("policy:") && c.status !== "PENDING_APPROVAL") return;
        setCommands((old) => new Map(old).set(c.command.command_id, c));
      },
      incident(data, id) {
        seen(id);
        setIncidents((old) => new Map(old).set(data.incident.incident_id, data.incident));
      },
      task(data, id) {
        seen(id);
        setTasks((old) => new Map(old).set(data.task.task_id, data.task));
      },
      alarm(data, id) {
        exposed.lastEventId = id;
        exposed.events += 1;
        setAlarms((old) => new Map(old).set(data.alarm.alarm_id, data.alarm));
      },
      other(_kind, _data, id) {
        exposed.lastEventId = id;
        exposed.events += 1;
      },
      refused(data) {
        setSession(null);
        alert(`The posts refused the event stream: ${data.message}`);
      },
    });
    exposed.ready = true;
    const tick = setInterval(() => setNow(Date.now()), 1000);
    return () => {
      stream.close();
      clearInterval(tick);
      exposed.ready = false;
      setPosts(null);
      setAlarms(new Map());
      setLastAt(null);
      setSelected(null);
      setGroups(null);
      setCommands(new Map());
      setIncidents(new Map());
      setTasks(new Map());
      communeOf.current = new Map();
    };
  }, [live]);

  useEffect(() => {
    // Renew the access token a minute before it ends; the page keeps it in memory only.
    if (!session) return undefined;
    const wait = Number(session.access_expires_at_ms) - Date.now() - RENEW_BEFORE_MS;
    const timer = setTimeout(async () => {
      try {
        setSession(await rpc("AuthService/Refresh", { refresh_token: session.refresh_token }));
      } catch {
        setSession(null);
      }
    }, Math.max(wait, 1000));
    return () => clearTimeout(timer);
  }, [session]);

  async function logout() {
    await rpc("AuthService/Logout", { refresh_token: session.refresh_token }).catch(() => {});
    setSession(null);
  }
  const leading = Boolean(posts && posts.leader);
  const fresh = lastAt == null ? null : Math.max(0, Math.round((now - lastAt) / 1000));
  // The map keeps its place (main's first child) with or without a session.
  const map = html`<${CityMap} key="map" token=${token} live=${live} alarms=${alarms} onSelect=${setSelected} onColumns=${columns} />`;
  if (!session) return html`
    <header class="banner banner-connecting"><h1>citypost · control room</h1><span>Not logged in</span></header>
    <main>
      ${map}
      <div class="side"><${Login} onSession=${setSession} /></div>
    </main>`;
  return html`
    <${Banner} posts=${posts} fresh=${fresh} session=${session} onLogout=${logout} />
    <main>
      ${map}
      <div class="side">
        ${selected && html`<${AssetDetails} eui=${selected} token=${token} alarms=${alarms} commands=${commands} onClose=${() => setSelected(null)} />`}
        <${CommandDialog} groups=${groups} token=${token} leading=${leading} commands=${commands} />
        <${Approvals} commands=${commands} token=${token} leading=${leading} />
      </div>
      <${Alarms} alarms=${alarms} token=${token} leading=${leading} placeOf=${placeOf} />
      <div class="work">
        <${Incidents} incidents=${incidents} token=${token} leading=${leading} />
        <${Tasks} tasks=${tasks} token=${token} leading=${leading} />
        <${RecentCommands} commands=${commands} />
        <${Health} posts=${posts} token=${token} />
      </div>
    </main>`;
}

function App() {
  const [session, setSession] = useState(null);
  return html`<${Room} session=${session} setSession=${setSession} />`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "loading" line, shown until this module runs
render(html`<${App} />`, root);
