// The control room's web console: log in, the banner (who leads, epoch, standby lag,
// freshness), the alarm list handled from the keyboard. No build step: ES modules from
// /static and /vendor (the import map in index.html). Tokens live in memory only.
import { h, render } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";
import { openEvents } from "/static/events.js";

const html = htm.bind(h);
const RENEW_BEFORE_MS = 60_000;

// What tests and the wall read: ready, leader, epoch, lastEventId, events, alarms shown.
const exposed = (window.__console = { ready: false, leader: null, epoch: 0, lastEventId: null, events: 0 });

async function rpc(method, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const reply = await fetch(`/api/rpc/${method}`, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const data = await reply.json().catch(() => ({ message: reply.statusText }));
  if (!reply.ok) {
    const error = new Error(data.message || reply.statusText);
    error.status = reply.status;
    error.code = data.error;
    throw error;
  }
  return data;
}

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
      <h1 id="login-title">citypost · control room</h1>
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

function Alarms({ alarms, token, leading }) {
  const [at, setAt] = useState(0);
  const [message, setMessage] = useState("");
  const rows = [...alarms.values()].sort(
    (a, b) => (SEVERITY[a.severity] || 9) - (SEVERITY[b.severity] || 9) || (b.raised_at_ms || 0) - (a.raised_at_ms || 0));
  async function act(verb, alarm, extra) {
    try {
      await rpc(`OperatorService/${verb}`, { idempotency_key: crypto.randomUUID(), alarm_id: alarm.alarm_id, ...extra }, token());
      setMessage(`${verb} ${alarm.alarm_id}: done`);
    } catch (e) {
      setMessage(`${verb} ${alarm.alarm_id}: ${e.message}`);
    }
  }
  function onKey(event) {
    const alarm = rows[at];
    if (event.key === "j") setAt(Math.min(at + 1, rows.length - 1));
    else if (event.key === "k") setAt(Math.max(at - 1, 0));
    else if (!alarm || !leading) return;
    else if (event.key === "a") act("AcknowledgeAlarm", alarm, {});
    else if (event.key === "c") act("ClearAlarm", alarm, {});
    else if (event.key === "s") {
      const reason = prompt("Shelve: the reason");
      const minutes = Number(prompt("Shelve: for how many minutes", "30"));
      if (reason && minutes > 0) act("ShelveAlarm", alarm, { reason, minutes });
    }
  }
  return html`
    <section class="alarms" aria-labelledby="alarms-title">
      <h2 id="alarms-title">Alarms (${rows.length})</h2>
      <p class="keys">j / k move · a acknowledge · s shelve · c clear${leading ? "" : " (disabled: no post leads)"}</p>
      <table tabindex="0" onKeyDown=${onKey} aria-label="Alarms, most severe first">
        <thead><tr><th>Severity</th><th>Type</th><th>Asset</th><th>State</th><th>Detail</th></tr></thead>
        <tbody>${rows.map((a, i) => html`
          <tr key=${a.alarm_id} class=${`${i === at ? "selected " : ""}sev-${(a.severity || "").toLowerCase()}`} aria-selected=${i === at}>
            <td>${SEVERITY[a.severity] || "?"} ${a.severity}</td><td>${a.type}</td><td>${a.originator}</td>
            <td>${a.state}</td><td>${a.detail || ""}</td></tr>`)}
        </tbody>
      </table>
      ${message && html`<p role="status">${message}</p>`}
    </section>`;
}

function Room({ session, setSession }) {
  const [posts, setPosts] = useState(null);
  const [alarms, setAlarms] = useState(new Map());
  const [lastAt, setLastAt] = useState(null);
  const [now, setNow] = useState(Date.now());
  // The stream and the handlers outlive a renewal: they read the current token here.
  const current = useRef(session.access_token);
  current.current = session.access_token;
  const token = () => current.current;
  exposed.token = token;

  async function readAlarms() {
    const reply = await rpc("OperatorService/ListAlarms", { page_size: 1000 }, token());
    setAlarms(new Map((reply.alarms || []).map((a) => [a.alarm_id, a])));
  }

  useEffect(() => {
    const stream = openEvents(token, {
      posts(data) {
        setPosts(data);
        setLastAt(Date.now());
        exposed.leader = data.leader;
        exposed.epoch = data.epoch;
      },
      resync() {
        readAlarms().catch(() => {});
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
    return () => { stream.close(); clearInterval(tick); exposed.ready = false; };
  }, []);

  useEffect(() => {
    // Renew the access token a minute before it ends; the page keeps it in memory only.
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
  const fresh = lastAt == null ? null : Math.max(0, Math.round((now - lastAt) / 1000));
  return html`
    <${Banner} posts=${posts} fresh=${fresh} session=${session} onLogout=${logout} />
    <main><${Alarms} alarms=${alarms} token=${token} leading=${Boolean(posts && posts.leader)} /></main>`;
}

function App() {
  const [session, setSession] = useState(null);
  return session ? html`<${Room} session=${session} setSession=${setSession} />` : html`<${Login} onSession=${setSession} />`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "loading" line, shown until this module runs
render(html`<${App} />`, root);
