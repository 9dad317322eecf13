// Opens a speedscope JSON file in the real speedscope app (npm package "speedscope",
// its built app under dist/release) in headless Chromium, and reports what it drew.
//
//   node render.mjs PROFILE.json SCREENSHOT.png [EXPECTED_NAME ...]
//
// Prints one JSON object: {texts, screenshot, errors, blocked}. `texts` are the strings
// speedscope passed to CanvasRenderingContext2D.fillText (the flame graph's labels are
// drawn that way, so they are not in the DOM). The page is served from 127.0.0.1 on a
// random port and any request elsewhere is refused, so the test needs no network.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { chromium } from "playwright-core";

const [profilePath, screenshotPath, ...expected] = process.argv.slice(2);
if (!profilePath || !screenshotPath) {
  console.error("usage: node render.mjs PROFILE.json SCREENSHOT.png [EXPECTED_NAME ...]");
  process.exit(2);
}

const require = createRequire(import.meta.url);
const appDir = path.join(path.dirname(require.resolve("speedscope/package.json")), "dist", "release");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeoutMs = Number(process.env.RENDER_TIMEOUT_MS || 30000);

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
  ".wasm": "application/wasm",
  ".txt": "text/plain; charset=utf-8",
};

// Serves the app's files and the profile under /profile.json; nothing else.
function serve() {
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    let file;
    if (url.pathname === "/profile.json") {
      file = profilePath;
    } else {
      const rel = path.normalize(decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname));
      file = path.join(appDir, rel);
      if (!file.startsWith(appDir + path.sep)) {
        res.writeHead(403).end();
        return;
      }
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] || "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// Runs in the page before speedscope: remember every string drawn on a 2D canvas.
function recordFillText() {
  window.__drawnTexts = new Set();
  const original = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
    window.__drawnTexts.add(String(text));
    return original.call(this, text, ...rest);
  };
}

const server = await serve();
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: [
    "--headless=new",
    "--no-sandbox", // CI runs as root, where Chromium's sandbox will not start
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    // No GPU here: speedscope draws the boxes with WebGL, so use SwiftShader.
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
  ],
});

const errors = [];
const blocked = [];
let result;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // Only our loopback server may be reached.
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(origin + "/") || url.startsWith("data:") || url.startsWith("blob:")) {
      return route.continue();
    }
    blocked.push(url);
    return route.abort();
  });
  await context.addInitScript(recordFillText);
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });

  const profileURL = encodeURIComponent(`${origin}/profile.json`);
  await page.goto(`${origin}/index.html#profileURL=${profileURL}`, { waitUntil: "load" });

  // Wait until every expected name was drawn, or (with none given) until something was.
  await page
    .waitForFunction(
      (names) => {
        const drawn = window.__drawnTexts;
        if (!drawn || drawn.size === 0) return false;
        return names.every((n) => [...drawn].some((t) => t.includes(n)));
      },
      expected,
      { timeout: timeoutMs, polling: 200 },
    )
    .catch((e) => errors.push(`waiting for names: ${e.message.split("\n")[0]}`));
  // One more frame so the screenshot shows the settled drawing.
  await page.waitForTimeout(500);
  await page.screenshot({ path: screenshotPath });
  const texts = await page.evaluate(() => [...(window.__drawnTexts || [])]);
  result = { texts, screenshot: screenshotPath, errors, blocked };
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(result));
