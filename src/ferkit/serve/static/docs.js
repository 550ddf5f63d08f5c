// Draws /openapi.json as a readable list of endpoints (offline: no Swagger UI from a CDN).
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function table(head, rows) {
  const t = el("table");
  const tr = el("tr");
  head.forEach((h) => tr.appendChild(el("th", h)));
  t.appendChild(tr);
  rows.forEach((r) => {
    const row = el("tr");
    r.forEach((c) => row.appendChild(el("td", c)));
    t.appendChild(row);
  });
  return t;
}

function schemaText(s) {
  if (!s) return "";
  if (s.enum) return s.enum.join(" | ");
  if (s.anyOf) return s.anyOf.map(schemaText).filter((x) => x !== "null").join(" | ");
  return s.type || "";
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  document.getElementById("version").textContent = `${spec.info.title} ${spec.info.version}`;
  document.getElementById("description").textContent = spec.info.description || "";
  const root = document.getElementById("paths");
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const box = el("div", undefined, "op");
      const h = el("h3");
      h.append(el("span", method.toUpperCase(), "method " + method), el("code", path),
               document.createTextNode("  " + (op.summary || "")));
      box.appendChild(h);
      if (op.description) box.appendChild(el("p", op.description));
      const params = (op.parameters || []).map((p) => [p.name, p.in, schemaText(p.schema),
        p.schema && p.schema.default !== undefined ? String(p.schema.default) : "", p.description || ""]);
      if (params.length) box.appendChild(table(["parameter", "in", "type", "default", ""], params));
      if (op.requestBody) {
        box.appendChild(el("p", "body: " + Object.keys(op.requestBody.content).join(", ")));
      }
      const res = Object.entries(op.responses || {}).map(([code, r]) => [code, r.description || ""]);
      if (res.length) box.appendChild(table(["status", "meaning"], res));
      root.appendChild(box);
    }
  }
}).catch((e) => {
  document.getElementById("paths").textContent = "cannot load /openapi.json: " + e.message;
});
