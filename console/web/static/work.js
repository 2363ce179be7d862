// The departments' work: incidents (citizen reports arrive here live) and tasks, created,
// assigned and closed from the room. Lists come from the posts and follow the event stream.
import { h } from "preact";
import { useState } from "preact/hooks";
import htm from "htm";
import { newKey, rpc } from "/static/api.js";

const html = htm.bind(h);
const KINDS = ["INCIDENT_ACCIDENT", "INCIDENT_FIRE", "INCIDENT_DEMONSTRATION", "INCIDENT_FAULT", "INCIDENT_SNOW_ICE", "INCIDENT_OTHER"];
const DEPARTMENTS = ["POLICE", "MUNICIPAL_POLICE", "ROADS", "WASTE", "SNOW_SERVICE", "CITIZEN_SERVICES"];
const OPEN_TASK = new Set(["OPEN", "ASSIGNED", "IN_PROGRESS"]);
const DIJON = { latitude: 47.3220, longitude: 5.0415 };

const label = (s) => (s || "").replace(/^INCIDENT_/, "").replaceAll("_", " ").toLowerCase();

export function Incidents({ incidents, token, leading }) {
  const [message, setMessage] = useState("");
  const open = [...incidents.values()].filter((i) => !i.closed)
    .sort((a, b) => (a.priority || 9) - (b.priority || 9) || Number(b.opened_at_ms || 0) - Number(a.opened_at_ms || 0));
  async function create(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    try {
      const made = await rpc("OperatorService/CreateIncident", {
        idempotency_key: newKey(), kind: form.get("kind"), detail: form.get("detail"),
        priority: Number(form.get("priority")), location: DIJON,
      }, token());
      setMessage(`Incident ${made.incident_id.slice(0, 8)} opened`);
      event.target.reset();
    } catch (e) {
      setMessage(e.message);
    }
  }
  return html`
    <section class="incidents" aria-labelledby="incidents-title">
      <h2 id="incidents-title">Incidents (${open.length} open)</h2>
      <table aria-label="Open incidents, most urgent first">
        <thead><tr><th>P</th><th>Kind</th><th>Where</th><th>From</th><th>Detail</th></tr></thead>
        <tbody>${open.slice(0, 50).map((i) => html`
          <tr key=${i.incident_id}><td>${i.priority}</td><td>${label(i.kind)}</td><td>${i.commune}</td>
            <td>${label(i.source)}</td><td>${i.detail}</td></tr>`)}</tbody>
      </table>
      <form onSubmit=${create} aria-label="New incident" class="inline">
        <label>Kind <select name="kind">${KINDS.map((k) => html`<option value=${k}>${label(k)}</option>`)}</select></label>
        <label>Priority <input name="priority" type="number" min="1" max="5" defaultValue="3" /></label>
        <label>Detail <input name="detail" maxlength="500" required /></label>
        <button type="submit" disabled=${!leading}>Open incident</button>
      </form>
      ${message && html`<p role="status">${message}</p>`}
    </section>`;
}

export function Tasks({ tasks, token, leading }) {
  const [message, setMessage] = useState("");
  const open = [...tasks.values()].filter((t) => OPEN_TASK.has(t.status))
    .sort((a, b) => (a.priority || 9) - (b.priority || 9) || Number(a.created_at_ms || 0) - Number(b.created_at_ms || 0));
  async function act(verb, body, done) {
    try {
      await rpc(`OperatorService/${verb}`, { idempotency_key: newKey(), ...body }, token());
      setMessage(done);
    } catch (e) {
      setMessage(e.message);
    }
  }
  async function create(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    await act("CreateTask", { department: form.get("department"), kind: form.get("kind"),
      priority: Number(form.get("priority")), detail: form.get("detail"), location: DIJON }, "Task created");
    event.target.reset();
  }
  function assign(task) {
    const who = prompt(`Assign ${task.kind} to (a team or a vehicle's devEui)`);
    if (who) act("AssignTask", { task_id: task.task_id, assignee: who }, `Assigned to ${who}`);
  }
  function close(task, cancelled) {
    const comment = prompt(cancelled ? "Cancel: why" : "Done: a comment (optional)") ?? null;
    if (comment === null) return;
    act("CloseTask", { task_id: task.task_id, cancelled, comment }, cancelled ? "Cancelled" : "Closed");
  }
  return html`
    <section class="tasks" aria-labelledby="tasks-title">
      <h2 id="tasks-title">Tasks (${open.length} open)</h2>
      <table aria-label="Open tasks, most urgent first">
        <thead><tr><th>P</th><th>Department</th><th>Kind</th><th>Status</th><th>Assignee</th><th></th></tr></thead>
        <tbody>${open.slice(0, 50).map((t) => html`
          <tr key=${t.task_id}><td>${t.priority}</td><td>${label(t.department)}</td><td>${t.kind}</td>
            <td>${t.status}</td><td>${t.assignee || "–"}</td>
            <td><button onClick=${() => assign(t)} disabled=${!leading || t.status !== "OPEN"}>Assign</button>
              <button onClick=${() => close(t, false)} disabled=${!leading || t.status === "OPEN"}>Done</button>
              <button onClick=${() => close(t, true)} disabled=${!leading}>Cancel</button></td></tr>`)}</tbody>
      </table>
      <form onSubmit=${create} aria-label="New task" class="inline">
        <label>Department <select name="department">${DEPARTMENTS.map((d) => html`<option value=${d}>${label(d)}</option>`)}</select></label>
        <label>Kind <input name="kind" maxlength="64" required /></label>
        <label>Priority <input name="priority" type="number" min="1" max="5" defaultValue="3" /></label>
        <label>Detail <input name="detail" maxlength="500" /></label>
        <button type="submit" disabled=${!leading}>Create task</button>
      </form>
      ${message && html`<p role="status">${message}</p>`}
    </section>`;
}
