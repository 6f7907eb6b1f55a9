// Opens the coordinator's dashboard in Debian's Chromium (headless, driven by playwright-core)
// and checks what an operator would look at: every peer of the running swarm has a row, the
// loss charts have train-loss points (a round went through), the page made no request outside the coordinator (no CDN: it works
// offline) and logged no error. Saves a screenshot.
//
//   node dashboard_test.mjs URL EXPECTED_PEERS SCREENSHOT.png PROFILE_DIR
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const [url, expectedPeers, screenshot, profile] = process.argv.slice(2);
const origin = new URL(url).origin;
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const failures = [];
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("request", (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith("data:")) failures.push("external request: " + r.url());
  });
  page.on("console", (m) => { if (m.type() === "error") failures.push("console error: " + m.text()); });
  page.on("pageerror", (e) => failures.push("page error: " + e.message));
  await page.goto(url, { waitUntil: "load", timeout: 15000 });
  // Live: the page polls; wait until the swarm shows up and a round is charted.
  await page.waitForFunction((n) =>
    document.querySelectorAll('#peers tbody tr[data-state="member"]').length >= n &&
    Number(document.getElementById("loss-steps").getAttribute("data-first-points")) > 0 &&
    Number(document.getElementById("loss-bytes").getAttribute("data-first-points")) > 0,
    Number(expectedPeers), { timeout: 60000, polling: 500 });
  const rows = await page.locator('#peers tbody tr[data-state="member"]').count();
  const points = Number(await page.locator("#loss-steps").getAttribute("data-first-points"));
  const circles = await page.locator("#loss-steps circle").count();
  const epoch = await page.locator("#epoch").textContent();
  if (rows !== Number(expectedPeers)) failures.push(`${rows} member rows, expected ${expectedPeers}`);
  if (circles === 0) failures.push("the loss chart has a data count but no drawn point");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ test: "dashboard", member_rows: rows, train_loss_points: points,
                               drawn_points: circles, epoch: Number(epoch), failures }));
} catch (e) {
  failures.push(String(e));
} finally {
  await context.close();
}
if (failures.length) {
  console.error("dashboard test failed:\n  " + failures.join("\n  "));
  process.exit(1);
}
