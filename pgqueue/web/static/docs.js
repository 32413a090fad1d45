// The API docs page: draws /openapi.json as a list of operations with their parameters, bodies and responses.
// Written here rather than loaded from a CDN, so the docs work on a machine without internet access.

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function refName(schema) { return schema?.$ref ? schema.$ref.split("/").pop() : null; }

function describe(schema, components, depth = 0) {
  if (!schema) return "";
  const name = refName(schema);
  if (name) {
    if (depth > 1) return `<code>${esc(name)}</code>`;
    return `<code>${esc(name)}</code>${describe(components[name], components, depth + 1)}`;
  }
  if (schema.anyOf) return schema.anyOf.map((s) => describe(s, components, depth)).join(" | ");
  if (schema.type === "array") return `array of ${describe(schema.items, components, depth)}`;
  if (schema.enum) return `one of ${schema.enum.map((v) => `<code>${esc(v)}</code>`).join(", ")}`;
  if (schema.properties) {
    const required = new Set(schema.required || []);
    return `<table><tbody>${Object.entries(schema.properties).map(([key, prop]) => `<tr><td><code>${esc(key)}</code>${required.has(key) ? " *" : ""}</td>
      <td>${describe(prop, components, depth + 1)}</td><td class="muted">${esc(prop.description || "")}</td></tr>`).join("")}</tbody></table>`;
  }
  const limits = ["minimum", "maximum", "minLength", "maxLength", "pattern"].filter((k) => k in schema).map((k) => `${k} ${esc(schema[k])}`);
  return `${esc(schema.type || schema.format || "any")}${limits.length ? ` <span class="muted">(${limits.join(", ")})</span>` : ""}`;
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  const components = spec.components?.schemas || {};
  document.getElementById("intro").innerHTML = `<h2>${esc(spec.info.title)} ${esc(spec.info.version)}</h2><p>${esc(spec.info.description)}</p>`;
  const ops = [];
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) ops.push({ path, method, op });
  }
  document.getElementById("ops").innerHTML = ops.map(({ path, method, op }) => `<details class="op">
    <summary><span class="verb ${method}">${method.toUpperCase()}</span><code class="path">${esc(path)}</code><span class="muted">${esc(op.summary || "")}</span></summary>
    <div class="body"><p>${esc(op.description || "")}</p>
    ${(op.parameters || []).length ? `<h3>Parameters</h3><table><tbody>${op.parameters.map((p) => `<tr><td><code>${esc(p.name)}</code>${p.required ? " *" : ""}</td>
      <td class="muted">${esc(p.in)}</td><td>${describe(p.schema, components)}</td><td class="muted">${esc(p.description || "")}</td></tr>`).join("")}</tbody></table>` : ""}
    ${op.requestBody ? `<h3>Body</h3>${describe(op.requestBody.content["application/json"]?.schema, components)}` : ""}
    <h3>Responses</h3><table><tbody>${Object.entries(op.responses).map(([code, r]) => `<tr><td><code>${code}</code></td><td>${esc(r.description)}</td>
      <td>${describe(r.content?.["application/json"]?.schema, components, 2)}</td></tr>`).join("")}</tbody></table></div></details>`).join("");
}

main();
