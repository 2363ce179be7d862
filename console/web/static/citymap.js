// The live city map, offline: MapLibre GL over the project's schematic base (commune cells,
// the old town's bollard sector, bus lines, gateway sites), every asset drawn the ISA-101
// way. Normal states are greys on a grey base (light: at rest, dark: working, hollow: not
// heard yet); only the abnormal gets colour, always doubled by shape, in its own small
// layer: an alarm is a triangle (its priority's colour), a reported fault a square,
// something to look at (ice, a leak, a camera event, a signal in fail-safe) a diamond.
// Gateways' and zones' alarms are marked at the gateway's site and the zone's middle.
// The fixed assets are one WebGL layer (assetlayer.js); lamps are one circle per group at
// city zoom (ringed in their worst lamp's colour) and single lamps from zoom 14; vehicles
// move in their own source. The base is drawn from the page's start, behind the login;
// the data, with a session: /api/map (columns, once) and /api/map/events (a snapshot,
// then changes), asked for together.
import { Map as MapLibreMap, prewarm } from "maplibre-gl";
import { h } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";
import { AssetLayer } from "/static/assetlayer.js";
import { openEvents } from "/static/events.js";
import { abnormalMarks, placer, RANK } from "/static/marks.js";

const html = htm.bind(h);
// The map's workers start while the operator logs in, not after.
prewarm();
const LAMP = 1;
const VEHICLES = new Set([9, 10]); // BUS, COMPANY_CAR
const LAMPS_FROM_ZOOM = 14;
const OVERLAY_EVERY_MS = 500;
const CLICK_PX = 4; // how far from an asset's circle a click still picks it
const BOUNDS = [[4.93, 47.227], [5.193, 47.378]];
// Okabe-Ito colours (colour-blind safe); the alarm colours match the alarm list's.
const MARKS = {
  critical: { shape: "triangle", fill: "#d55e00" },
  major: { shape: "triangle", fill: "#e69f00" },
  minor: { shape: "triangle", fill: "#0072b2" },
  fault: { shape: "square", fill: "#cc79a7" },
  attention: { shape: "diamond", fill: "#f0e442" },
  gateway: { shape: "mast", fill: "#ffffff" },
};

function markImage(shape, fill) {
  // A 20 px mark with a dark outline, drawn into the map's sprite when first used.
  const size = 20;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  g.beginPath();
  if (shape === "triangle") { g.moveTo(10, 1); g.lineTo(19, 18); g.lineTo(1, 18); }
  else if (shape === "square") { g.rect(3, 3, 14, 14); }
  else if (shape === "mast") { g.arc(10, 10, 6, 0, 2 * Math.PI); g.moveTo(12, 10); g.arc(10, 10, 2, 0, 2 * Math.PI); }
  else { g.moveTo(10, 1); g.lineTo(19, 10); g.lineTo(10, 19); g.lineTo(1, 10); }
  g.closePath();
  g.fillStyle = fill;
  g.fill("evenodd");
  g.lineWidth = shape === "mast" ? 1.5 : 2;
  g.strokeStyle = "#1a1a1a";
  g.stroke();
  return g.getImageData(0, 0, size, size);
}

// A lamp group's ring colour by its worst lamp's mark's rank.
const RING_COLOURS = Object.entries(RANK).sort((a, b) => a[1] - b[1]).map(([mark]) => MARKS[mark].fill);

function style() {
  const empty = (maxzoom) => ({ type: "geojson", data: { type: "FeatureCollection", features: [] }, maxzoom });
  const base = (kind) => ["==", ["get", "kind"], kind];
  return {
    version: 8,
    sources: {
      // Absolute: the worker that fetches it runs from a blob: URL.
      base: { type: "geojson", data: new URL("/static/basemap.geojson", location.href).href, maxzoom: 10 },
      vehicles: empty(12),
      abnormal: empty(12),
    },
    layers: [
      { id: "background", type: "background", paint: { "background-color": "#d9d9d9" } },
      { id: "communes", type: "fill", source: "base", filter: base("commune"),
        paint: { "fill-color": "#ececec", "fill-outline-color": "#a0a0a0" } },
      { id: "old-town", type: "line", source: "base", filter: base("old_town"),
        paint: { "line-color": "#707070", "line-width": 1.5, "line-dasharray": [3, 2] } },
      { id: "bus-lines", type: "line", source: "base", filter: base("bus_line"),
        paint: { "line-color": "#b5b5b5", "line-width": 2 } },
      // Commune names, drawn with the browser's own fonts (no glyph server here).
      { id: "commune-labels", type: "symbol", source: "base", filter: base("commune"),
        layout: { "text-field": ["get", "name"], "text-size": 12, "text-font": ["sans-serif"] },
        paint: { "text-color": "#4a4a4a", "text-halo-color": "#ececec", "text-halo-width": 1.2 } },
      // (the assets' and lamp groups' layer goes here, added once the style is in: assetlayer.js)
      { id: "vehicles", type: "circle", source: "vehicles",
        paint: { "circle-radius": ["case", ["==", ["get", "c"], 9], 5, 3.5], "circle-color": "#3a3a3a",
          "circle-stroke-color": "#ffffff", "circle-stroke-width": 1.2 } },
      // Above the vehicles that pass them.
      { id: "gateways", type: "symbol", source: "base", filter: base("gateway"),
        layout: { "icon-image": "gateway", "icon-size": 0.8, "icon-allow-overlap": true, "icon-ignore-placement": true } },
      { id: "abnormal", type: "symbol", source: "abnormal",
        layout: { "icon-image": ["get", "mark"], "icon-allow-overlap": true, "icon-ignore-placement": true,
          "icon-size": ["interpolate", ["linear"], ["zoom"], 10, 0.55, 15, 0.9],
          "symbol-sort-key": ["get", "rank"] } },
    ],
  };
}

// Lamp groups' centres and sizes (id: the group's number).
function lampGroupsOf(cols) {
  const groups = new Map();
  cols.cls.forEach((cls, i) => {
    if (cls !== LAMP) return;
    const g = groups.get(cols.grp[i]) || { n: 0, lat: 0, lon: 0 };
    g.n += 1; g.lat += cols.lat[i]; g.lon += cols.lon[i];
    groups.set(cols.grp[i], g);
  });
  return [...groups.entries()].map(([id, g]) => ({ id, lon: g.lon / g.n, lat: g.lat / g.n, n: g.n }));
}

async function gatewaySites() {
  const reply = await fetch("/static/basemap.geojson");
  const base = reply.ok ? await reply.json() : { features: [] };
  return new Map(base.features.filter((f) => f.properties.kind === "gateway")
    .map((f) => [f.properties.gateway_id, f.geometry.coordinates]));
}

export function CityMap({ token, live, alarms, onSelect, onColumns }) {
  const container = useRef(null);
  const held = useRef(null); // the map and its asset layer, for as long as the page
  const data = useRef(null); // the city's data on it, for as long as a login
  const latestAlarms = useRef(alarms);
  latestAlarms.current = alarms;
  const [status, setStatus] = useState("");

  // The base (commune cells, the old town, bus lines, gateway sites) is drawn from the
  // page's start, while the operator logs in: after the click only the city's data and a
  // frame remain. It is public geography; the assets come only with a session.
  useEffect(() => {
    const exposed = (window.__console.map = { base: false, ready: false, assets: 0, vehicles: 0, updates: 0, seq: 0,
      phases: {}, frames: 0 });
    const map = new MapLibreMap({ container: container.current, style: style(), bounds: BOUNDS,
      attributionControl: false, fadeDuration: 0 });
    const assets = new AssetLayer("assets", LAMPS_FROM_ZOOM, RING_COLOURS);
    held.current = { map, assets, exposed };
    exposed.points = () => assets.count; // what the asset layer holds (tests: none after a logout)
    map.setMissingStyleImageResolver(async (id) => {
      const mark = MARKS[id];
      if (mark && !map.hasImage(id)) map.addImage(id, markImage(mark.shape, mark.fill));
    });
    map.on("style.load", () => map.addLayer(assets, "vehicles"));
    const onBase = () => {
      if (!map.getSource("base") || !map.isSourceLoaded("base")) return;
      map.off("render", onBase);
      exposed.base = true;
      exposed.baseAt = performance.now();
    };
    map.on("render", onBase);
    map.on("click", (event) => {
      const state = data.current;
      if (!onSelect || !state || !state.cols) return;
      const hit = map.queryRenderedFeatures(event.point, { layers: ["abnormal", "vehicles"] })[0];
      const eui = hit ? (hit.layer.id === "abnormal" ? hit.properties.originator : state.cols.eui[Number(hit.id)])
        : state.cols.eui[assets.nearest(map, event.point, CLICK_PX)];
      if (eui && state.places.index.has(eui)) onSelect(eui);
    });
    for (const layer of ["abnormal", "vehicles"]) {
      map.on("mouseenter", layer, () => { map.getCanvas().style.cursor = "pointer"; });
      map.on("mouseleave", layer, () => { map.getCanvas().style.cursor = ""; });
    }
    return () => map.remove();
  }, []);

  // The city's data, while a session lasts: the columns (/api/map) and the states stream,
  // asked for together; a logout takes every asset off the map.
  useEffect(() => {
    if (!live) { setStatus("Log in to see the city's assets"); return undefined; }
    setStatus("Loading the map…");
    const { map, assets, exposed } = held.current;
    let closed = false;
    Object.assign(exposed, { ready: false, complete: false, assets: 0, vehicles: 0, updates: 0, seq: 0,
      phases: {}, frames: 0 });
    const collection = (features) => ({ type: "FeatureCollection", features });
    exposed.screenOf = (eui) => {
      const i = state.places.index.get(eui);
      const p = map.project([state.cols.lon[i], state.cols.lat[i]]);
      const box = container.current.getBoundingClientRect();
      return { x: box.left + p.x, y: box.top + p.y };
    };
    const state = (data.current = { cols: null, places: null, states: null, positions: new Map(),
      alarms: null, given: false, dirty: true, overlay: [] });
    const { positions } = state;
    const backlog = []; // states messages that came before the columns
    const source = (id) => map.getSource(id); // undefined until the style is in

    // Ready: the first frame drawn with the base, the lamp groups and every fixed asset,
    // checked on every frame (not the map's "idle": moving vehicles keep a live map from
    // being idle for long).
    const onRender = () => {
      exposed.frames += 1;
      if (!state.given || !assets.drawn || !map.isSourceLoaded("base")) return;
      map.off("render", onRender);
      exposed.ready = exposed.complete = true;
      exposed.readyAt = performance.now();
      setStatus("");
      source("vehicles").setData(vehicleData());
    };
    map.on("render", onRender);

    function vehicleData() {
      return collection([...positions.entries()].map(([i, p]) => ({
        type: "Feature", id: i, geometry: { type: "Point", coordinates: [p[1], p[0]] }, properties: { c: state.cols.cls[i] } })));
    }

    function applyChanges(indexes, values) {
      indexes.forEach((i, k) => {
        state.states[i] = values[k];
        assets.setState(i, values[k]);
      });
      state.dirty = true;
      map.triggerRepaint();
    }

    function columnsRead(cols, sites) {
      exposed.phases.columns = performance.now();
      if (onColumns) onColumns(cols);
      const places = placer(cols, sites);
      Object.assign(state, { cols, places, states: new Uint8Array(cols.eui.length) });
      assets.setAssets(cols, (i) => !VEHICLES.has(cols.cls[i]), (i) => cols.cls[i] === LAMP, lampGroupsOf(cols));
      exposed.assets = cols.eui.length;
      exposed.stateOf = (eui) => {
        const i = places.index.get(eui);
        return i === undefined ? undefined : assets.stateOf(i) ?? state.states[i];
      };
      exposed.markOf = (originator) => {
        const f = state.overlay.find((o) => o.properties.originator === originator);
        return f ? { mark: f.properties.mark, at: f.geometry.coordinates } : null;
      };
      // For bench.web: `n` fixed assets change state as a stream message would change
      // them; resolves with the milliseconds until the frame that draws them is rendered.
      exposed.timeChanges = (n) => new Promise((resolve) => {
        // Assets drawn at the current zoom first (lamps only close up).
        const shown = map.getZoom() >= LAMPS_FROM_ZOOM;
        const picked = [...assets.rows.filter((i) => shown || cols.cls[i] !== LAMP), ...assets.rows].slice(0, n);
        const start = performance.now();
        map.once("render", () => resolve(performance.now() - start));
        applyChanges(picked, picked.map((i) => (state.states[i] === 2 ? 1 : 2)));
      });
      for (const message of backlog.splice(0)) statesRead(message);
    }

    function statesRead(message) {
      const { cols, states } = state;
      if (message.map_id !== cols.map_id) { setStatus("The city's map changed: reload the page"); return; }
      exposed.seq = message.seq;
      exposed.updates += 1;
      if (message.snapshot) {
        states.set(message.s);
        positions.clear();
        assets.setStates(states);
        if (!state.given) {
          exposed.phases.snapshot = performance.now();
          state.given = true;
        }
        map.triggerRepaint();
      } else applyChanges(message.i, message.s);
      for (let k = 0; k < message.v.length; k += 4) positions.set(message.v[k], message.v.slice(k + 1, k + 4));
      exposed.vehicles = positions.size;
      if (exposed.ready && message.v.length) source("vehicles").setData(vehicleData());
      state.dirty = true;
    }

    const stream = openEvents(token, {
      states(message) {
        if (state.cols) statesRead(message);
        else backlog.push(message);
      },
      refused(message) { setStatus(`The posts refused the map: ${message.message}`); },
    }, "/api/map/events");
    (async () => {
      const sites = gatewaySites().catch(() => new Map());
      const reply = await fetch("/api/map", { headers: { Authorization: `Bearer ${token()}` } });
      if (!reply.ok) { setStatus(`The map could not be read: ${reply.status}`); return; }
      const cols = await reply.json();
      if (!closed) columnsRead(cols, await sites);
    })().catch((error) => setStatus(`The map failed: ${error.message}`));

    // The overlay of the abnormal and the lamp groups' rings, rebuilt at most twice a
    // second from states and alarms.
    const overlay = setInterval(() => {
      if (!state.given || !source("abnormal")) return;
      if (state.alarms !== latestAlarms.current) { state.alarms = latestAlarms.current; state.dirty = true; }
      if (!state.dirty) return;
      state.dirty = false;
      const { features, lampGroups } = abnormalMarks({ cols: state.cols, states: state.states,
        alarms: [...state.alarms.values()], positions, places: state.places });
      for (const group of assets.groupSlot.keys()) assets.setRing(group, lampGroups.has(group) ? RANK[lampGroups.get(group)] : -1);
      map.triggerRepaint();
      state.overlay = features;
      source("abnormal").setData(collection(features));
      exposed.abnormal = features.length;
    }, OVERLAY_EVERY_MS);

    return () => {
      closed = true;
      clearInterval(overlay);
      stream.close();
      map.off("render", onRender);
      data.current = null;
      assets.clear();
      for (const id of ["vehicles", "abnormal"]) if (source(id)) source(id).setData(collection([]));
      Object.assign(exposed, { ready: false, complete: false, assets: 0, vehicles: 0, abnormal: 0 });
      map.triggerRepaint();
    };
  }, [live]);

  return html`
    <section class="citymap" aria-labelledby="map-title">
      <h2 id="map-title">City map (schematic)</h2>
      <p class="legend" aria-label="Legend">
        <span class="key key-idle">at rest</span> <span class="key key-active">working</span>
        <span class="key key-unknown">not heard yet</span> <span>▲ alarm (red-orange critical,
        orange major, blue minor)</span> <span>■ fault</span> <span>◆ to look at</span>
        <span>◉ gateway</span> <span>a lamp group's ring: its worst lamp's colour</span>
      </p>
      ${status && html`<p role="status">${status}</p>`}
      <div class="map" ref=${container} role="img" aria-label="Map of the city's assets"></div>
    </section>`;
}
