// The live city map, offline: MapLibre GL over the project's schematic base (commune cells,
// the old town's bollard sector, bus lines), every asset drawn the ISA-101 way. Normal
// states are greys on a grey base (light: at rest, dark: working, hollow: not heard yet);
// only the abnormal gets colour, always doubled by shape, in its own small layer: an alarm
// is a triangle (its priority's colour), a reported fault a square, something to look at
// (ice, a leak, a camera event, a signal in fail-safe) a diamond. Lamps are one circle per
// group at city zoom and single lamps from zoom 14; vehicles move in their own source.
// Data: /api/map (columns, once) and /api/map/events (a snapshot, then changes).
import { Map as MapLibreMap, prewarm } from "maplibre-gl";
import { h } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "htm";
import { openEvents } from "/static/events.js";

const html = htm.bind(h);
// The map's workers start while the operator logs in, not after.
prewarm();
const LAMP = 1;
const VEHICLES = new Set([9, 10]); // BUS, COMPANY_CAR
const LAMPS_FROM_ZOOM = 14;
const OVERLAY_EVERY_MS = 500;
// Okabe-Ito colours (colour-blind safe); the alarm colours match the alarm list's.
const MARKS = {
  critical: { shape: "triangle", fill: "#d55e00" },
  major: { shape: "triangle", fill: "#e69f00" },
  minor: { shape: "triangle", fill: "#0072b2" },
  fault: { shape: "square", fill: "#cc79a7" },
  attention: { shape: "diamond", fill: "#f0e442" },
};
const ALARM_LEVEL = { CRITICAL: "critical", MAJOR: "major", MINOR: "minor", WARNING: "minor", INFO: "minor" };
const CLEARED = new Set(["CLEARED_UNACK", "CLEARED_ACK", "CLEARED"]);

function markImage(shape, fill) {
  // A 20 px mark with a dark outline, drawn once into the map's sprite.
  const size = 20;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const g = canvas.getContext("2d");
  g.beginPath();
  if (shape === "triangle") { g.moveTo(10, 1); g.lineTo(19, 18); g.lineTo(1, 18); }
  else if (shape === "square") { g.rect(3, 3, 14, 14); }
  else { g.moveTo(10, 1); g.lineTo(19, 10); g.lineTo(10, 19); g.lineTo(1, 10); }
  g.closePath();
  g.fillStyle = fill;
  g.fill();
  g.lineWidth = 2;
  g.strokeStyle = "#1a1a1a";
  g.stroke();
  return g.getImageData(0, 0, size, size);
}

// Display state: 0 not heard, 1 at rest, 2 working, 3 moving; 4 and 5 are drawn by the
// overlay as well, in grey here.
const STATE = ["coalesce", ["feature-state", "st"], ["get", "st"]];
const ASSET_PAINT = {
  "circle-radius": ["interpolate", ["linear"], ["zoom"], 10, 1.6, 14, 3.5, 17, 6],
  "circle-color": ["match", STATE, 0, "#ececec", 1, "#b0b0b0", "#5e5e5e"],
  "circle-stroke-color": "#5e5e5e",
  "circle-stroke-width": ["match", STATE, 0, 0.8, 0],
};

function style(assets, lampGroups) {
  return {
    version: 8,
    sources: {
      // Absolute: the worker that fetches it runs from a blob: URL.
      base: { type: "geojson", data: new URL("/static/basemap.geojson", location.href).href },
      assets: { type: "geojson", data: assets },
      // Filled once the first map is drawn: 34,000 lamps at full scale, drawn one by one
      // only close up, need not hold up the city's first picture.
      lamps: { type: "geojson", data: { type: "FeatureCollection", features: [] } },
      lampGroups: { type: "geojson", data: lampGroups },
      vehicles: { type: "geojson", data: { type: "FeatureCollection", features: [] } },
      abnormal: { type: "geojson", data: { type: "FeatureCollection", features: [] } },
    },
    layers: [
      { id: "background", type: "background", paint: { "background-color": "#d9d9d9" } },
      { id: "communes", type: "fill", source: "base", filter: ["==", ["get", "kind"], "commune"],
        paint: { "fill-color": "#ececec", "fill-outline-color": "#a0a0a0" } },
      { id: "old-town", type: "line", source: "base", filter: ["==", ["get", "kind"], "old_town"],
        paint: { "line-color": "#707070", "line-width": 1.5, "line-dasharray": [3, 2] } },
      { id: "bus-lines", type: "line", source: "base", filter: ["==", ["get", "kind"], "bus_line"],
        paint: { "line-color": "#b5b5b5", "line-width": 2 } },
      // Commune names, drawn with the browser's own fonts (no glyph server here).
      { id: "commune-labels", type: "symbol", source: "base", filter: ["==", ["get", "kind"], "commune"],
        layout: { "text-field": ["get", "name"], "text-size": 12, "text-font": ["sans-serif"] },
        paint: { "text-color": "#4a4a4a", "text-halo-color": "#ececec", "text-halo-width": 1.2 } },
      { id: "lamp-groups", type: "circle", source: "lampGroups", maxzoom: LAMPS_FROM_ZOOM,
        paint: { "circle-color": "#9a9a9a", "circle-opacity": 0.55, "circle-stroke-color": "#6b6b6b",
          "circle-stroke-width": 1, "circle-radius": ["interpolate", ["linear"], ["sqrt", ["get", "n"]], 1, 3, 40, 14] } },
      // Lamps one by one only from LAMPS_FROM_ZOOM (one circle per group below it).
      { id: "lamps", type: "circle", source: "lamps", minzoom: LAMPS_FROM_ZOOM, paint: ASSET_PAINT },
      { id: "assets", type: "circle", source: "assets", paint: ASSET_PAINT },
      { id: "vehicles", type: "circle", source: "vehicles",
        paint: { "circle-radius": ["case", ["==", ["get", "c"], 9], 5, 3.5], "circle-color": "#3a3a3a",
          "circle-stroke-color": "#ffffff", "circle-stroke-width": 1.2 } },
      { id: "abnormal", type: "symbol", source: "abnormal",
        layout: { "icon-image": ["get", "mark"], "icon-allow-overlap": true, "icon-ignore-placement": true,
          "icon-size": ["interpolate", ["linear"], ["zoom"], 10, 0.55, 15, 0.9],
          "symbol-sort-key": ["get", "rank"] } },
    ],
  };
}

// The map's rows and what the page knows of each: index by devEui, the lamps apart from the
// other fixed assets, lamp groups' centres.
function rowsOf(cols) {
  const index = new Map();
  const lampGroups = new Map();
  const assets = [];
  const lamps = [];
  cols.eui.forEach((eui, i) => {
    index.set(eui, i);
    if (VEHICLES.has(cols.cls[i])) return;
    (cols.cls[i] === LAMP ? lamps : assets).push({ type: "Feature", id: i,
      geometry: { type: "Point", coordinates: [cols.lon[i], cols.lat[i]] }, properties: { c: cols.cls[i], st: 0 } });
    if (cols.cls[i] === LAMP) {
      const g = lampGroups.get(cols.grp[i]) || { n: 0, lat: 0, lon: 0 };
      g.n += 1; g.lat += cols.lat[i]; g.lon += cols.lon[i];
      lampGroups.set(cols.grp[i], g);
    }
  });
  const groups = [...lampGroups.entries()].map(([grp, g]) => ({ type: "Feature", id: grp,
    geometry: { type: "Point", coordinates: [g.lon / g.n, g.lat / g.n] },
    properties: { n: g.n, name: cols.groups[grp] } }));
  return { index, assets, lamps, groups };
}

export function CityMap({ token, alarms, onSelect, onColumns }) {
  const container = useRef(null);
  const live = useRef(null); // what the stream handlers and the alarm overlay share
  const latestAlarms = useRef(alarms);
  latestAlarms.current = alarms;
  const [status, setStatus] = useState("Loading the map…");

  useEffect(() => {
    let stream = null;
    let map = null;
    let closed = false;
    const exposed = (window.__console.map = { ready: false, assets: 0, vehicles: 0, updates: 0, seq: 0 });
    (async () => {
      const reply = await fetch("/api/map", { headers: { Authorization: `Bearer ${token()}` } });
      if (!reply.ok) { setStatus(`The map could not be read: ${reply.status}`); return; }
      const cols = await reply.json();
      exposed.phases = { columns: performance.now() };
      if (closed) return;
      if (onColumns) onColumns(cols);
      const rows = rowsOf(cols);
      const states = new Uint8Array(cols.eui.length);
      const positions = new Map();
      const state = (live.current = { cols, rows, states, positions, alarms: null, map: null, dirty: true });
      exposed.assets = cols.eui.length;
      const sourceOf = (i) => (cols.cls[i] === LAMP ? "lamps" : "assets");
      const collection = (features) => ({ type: "FeatureCollection", features });
      exposed.stateOf = (eui) => {
        const i = rows.index.get(eui);
        if (i === undefined || !map) return undefined;
        const fs = map.getFeatureState({ source: sourceOf(i), id: i });
        return fs.st !== undefined ? fs.st : states[i];
      };
      exposed.markOf = (eui) => {
        const i = rows.index.get(eui);
        const f = (state.overlay || []).find((o) => o.id === i);
        return f ? f.properties.mark : null;
      };
      exposed.positionOf = (eui) => positions.get(rows.index.get(eui)) || null;

      function applyChanges(indexes, values) {
        indexes.forEach((i, k) => {
          states[i] = values[k];
          if (map) map.setFeatureState({ source: sourceOf(i), id: i }, { st: values[k] });
        });
        state.dirty = true;
      }
      // For bench.web: `n` assets change state as a stream message would change them;
      // resolves with the milliseconds until the frame that draws them is rendered (not
      // "idle": moving vehicles keep a live map from ever being idle for long).
      exposed.timeChanges = (n) => new Promise((resolve) => {
        // Assets drawn at the current zoom first (lamps are drawn one by one only close up).
        const picked = [...rows.assets, ...rows.lamps].slice(0, n).map((f) => f.id);
        const start = performance.now();
        applyChanges(picked, picked.map((i) => (states[i] === 2 ? 1 : 2)));
        map.once("render", () => resolve(performance.now() - start));
        map.triggerRepaint();
      });

      function vehicleData() {
        return { type: "FeatureCollection", features: [...positions.entries()].map(([i, p]) => ({
          type: "Feature", id: i, geometry: { type: "Point", coordinates: [p[1], p[0]] }, properties: { c: cols.cls[i] } })) };
      }

      function create(snapshot) {
        exposed.phases.snapshot = performance.now();
        for (const feature of rows.assets) feature.properties.st = snapshot[feature.id];
        map = state.map = new MapLibreMap({
          container: container.current,
          style: style(collection(rows.assets), collection(rows.groups)),
          bounds: [[4.93, 47.227], [5.193, 47.378]],
          attributionControl: false,
          fadeDuration: 0,
        });
        map.on("load", () => {
          exposed.phases.load = performance.now();
          for (const [name, mark] of Object.entries(MARKS)) map.addImage(name, markImage(mark.shape, mark.fill));
          state.loaded = true;
          state.dirty = true;
          // Ready: the first frame drawn with the base and every fixed asset in (not the
          // map's "idle": moving vehicles keep a live map from being idle for long).
          const drawn = () => ["base", "assets", "lampGroups"].every((id) => map.isSourceLoaded(id));
          const onRender = () => {
            if (!drawn()) return;
            map.off("render", onRender);
            exposed.ready = true;
            exposed.readyAt = performance.now();
            setStatus("");
            // Then the vehicles and the lamps.
            map.getSource("vehicles").setData(vehicleData());
            for (const feature of rows.lamps) feature.properties.st = states[feature.id];
            map.getSource("lamps").setData(collection(rows.lamps));
            const lampsIn = () => {
              if (!map.isSourceLoaded("lamps")) return;
              map.off("render", lampsIn);
              exposed.complete = true;
            };
            map.on("render", lampsIn);
          };
          map.on("render", onRender);
        });
        map.on("click", (event) => {
          const hit = map.queryRenderedFeatures(event.point, { layers: ["abnormal", "vehicles", "lamps", "assets"] })[0];
          if (hit && onSelect) onSelect(cols.eui[Number(hit.id)]);
        });
        for (const layer of ["abnormal", "vehicles", "lamps", "assets"]) {
          map.on("mouseenter", layer, () => { map.getCanvas().style.cursor = "pointer"; });
          map.on("mouseleave", layer, () => { map.getCanvas().style.cursor = ""; });
        }
      }

      stream = openEvents(token, {
        states(data) {
          if (data.map_id !== cols.map_id) { setStatus("The city's map changed: reload the page"); return; }
          exposed.seq = data.seq;
          exposed.updates += 1;
          if (data.snapshot) {
            states.set(data.s);
            positions.clear();
            if (!map) create(states);
            else {
              for (const [source, features] of [["assets", rows.assets], ["lamps", rows.lamps]]) {
                for (const feature of features) feature.properties.st = states[feature.id];
                map.removeFeatureState({ source });
                if (source === "assets" || exposed.ready) map.getSource(source).setData(collection(features));
              }
            }
          } else applyChanges(data.i, data.s);
          for (let k = 0; k < data.v.length; k += 4) positions.set(data.v[k], data.v.slice(k + 1, k + 4));
          exposed.vehicles = positions.size;
          if (exposed.ready && data.v.length) map.getSource("vehicles").setData(vehicleData());
          state.dirty = true;
        },
        refused(data) { setStatus(`The posts refused the map: ${data.message}`); },
      }, "/api/map/events");
    })().catch((error) => setStatus(`The map failed: ${error.message}`));

    // The overlay of the abnormal, rebuilt at most twice a second from states and alarms.
    const overlay = setInterval(() => {
      const state = live.current;
      if (!state || !state.loaded) return;
      if (state.alarms !== latestAlarms.current) { state.alarms = latestAlarms.current; state.dirty = true; }
      if (!state.dirty) return;
      state.dirty = false;
      const features = [];
      const { cols, states, rows } = state;
      const alarmed = new Map();
      for (const alarm of state.alarms.values()) {
        const i = rows.index.get(alarm.originator);
        const level = ALARM_LEVEL[alarm.severity];
        if (i === undefined || !level || CLEARED.has(alarm.state) || alarm.suppressed_by) continue;
        const rank = ["critical", "major", "minor"].indexOf(level);
        if (!alarmed.has(i) || rank < alarmed.get(i).rank) alarmed.set(i, { level, rank });
      }
      for (let i = 0; i < states.length; i += 1) {
        const a = alarmed.get(i);
        const mark = a ? a.level : states[i] === 5 ? "fault" : states[i] === 4 ? "attention" : null;
        if (!mark) continue;
        const p = state.positions.get(i);
        const at = p ? [p[1], p[0]] : [cols.lon[i], cols.lat[i]];
        features.push({ type: "Feature", id: i, geometry: { type: "Point", coordinates: at },
          properties: { mark, rank: a ? -10 + a.rank : mark === "fault" ? 0 : 1 } });
      }
      state.overlay = features;
      state.map.getSource("abnormal").setData({ type: "FeatureCollection", features });
      window.__console.map.abnormal = features.length;
    }, OVERLAY_EVERY_MS);

    return () => {
      closed = true;
      clearInterval(overlay);
      if (stream) stream.close();
      if (map) map.remove();
    };
  }, []);

  return html`
    <section class="citymap" aria-labelledby="map-title">
      <h2 id="map-title">City map (schematic)</h2>
      <p class="legend" aria-label="Legend">
        <span class="key key-idle">at rest</span> <span class="key key-active">working</span>
        <span class="key key-unknown">not heard yet</span> <span>▲ alarm (red-orange critical,
        orange major, blue minor)</span> <span>■ fault</span> <span>◆ to look at</span>
      </p>
      ${status && html`<p role="status">${status}</p>`}
      <div class="map" ref=${container} role="img" aria-label="Map of the city's assets"></div>
    </section>`;
}
