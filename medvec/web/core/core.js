// Medvec's web core: the DOM helpers both search pages use (`medvec serve`'s page in medvec/web and the
// serverless bundle's page in medvec/bundle/web, which gets a copy in its core/ folder at build).
// A classic script loaded before each page's own script, so these are globals there; the bundle's
// app.js is an ES module and reads them from the global scope all the same.
"use strict";

const $ = (selector) => document.querySelector(selector);

// Text only ever goes in as a text node, never as HTML.
function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== null && text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function scroll(table) {
  const box = element("div", null, "table-scroll");
  box.append(table);
  return box;
}

function showError(message) {
  $("#error").textContent = message;
  $("#error").hidden = !message;
}

// Two views, chosen by the address's #hash: search (the default) and metrics.
const viewFromAddress = () => window.location.hash.replace("#", "");
