// One MCP client run with a TypeScript SDK nobody on this project wrote, for the pytest tests.
//
//   node mcp_client.cjs '<plan JSON>'
//
// plan: {sdk: "v1" | "v2", url, headers?, era?: "legacy" | "modern" (v2 only), messages?: [text, ...],
//        logLevel?: "info", getPrompt?: {name, arguments}, complete?: {ref, argument, context?},
//        completeJobId?: true, follow?: text, clientName?: text (clientInfo.name), callMeta?: {…}}
// It connects over streamable HTTP, lists tools and prompts, runs the optional steps (each recorded as
// {ok: result} or {error: text}): setLoggingLevel, getPrompt, complete; calls send_message_to_ai once
// per message (all at once) with an onprogress handler that records each notification's `message` and
// `_meta`; completes a prefix of the first call's job id (completeJobId); submits `follow` and
// subscribes to its job:// resource, reading it on each notifications/resources/updated until it ends.
// It prints ONE JSON line of what it saw, with every other notification the server sent. Errors are
// recorded, never thrown, so the test can say which. callMeta is each call's `_meta` (a 2026-07-28
// request opts in to log messages with io.modelcontextprotocol/logLevel).
// The SDKs come from the npm cache the tests install (NODE_PATH points at its node_modules).
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const plan = JSON.parse(process.argv[2]);

function versionOf(entry) {
  // the nearest package.json above the entry point (v2 does not export ./package.json)
  for (let dir = path.dirname(require.resolve(entry)); ; dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (fs.existsSync(file) && JSON.parse(fs.readFileSync(file, 'utf8')).name) return JSON.parse(fs.readFileSync(file, 'utf8')).version;
  }
}

function sdk(name) {
  if (name === 'v1') {
    const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
    const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
    const version = versionOf('@modelcontextprotocol/sdk/client/index.js');
    return { Client, StreamableHTTPClientTransport, version, options: {} };
  }
  const { Client, StreamableHTTPClientTransport } = require('@modelcontextprotocol/client');
  const version = versionOf('@modelcontextprotocol/client');
  const mode = plan.era === 'modern' ? { pin: '2026-07-28' } : 'legacy';
  return { Client, StreamableHTTPClientTransport, version, options: { versionNegotiation: { mode } } };
}

const text = (error) => String((error && error.message) || error);

async function call(client, message) {
  const notifications = [];
  const seen = { message: message, notifications, result: null, isError: null, error: null };
  try {
    const params = { name: 'send_message_to_ai', arguments: { message }, _meta: plan.callMeta };
    const options = {
      timeout: 60000,
      resetTimeoutOnProgress: true,
      onprogress: (p) => notifications.push({ progress: p.progress, total: p.total, message: p.message, _meta: p._meta }),
    };
    const result = plan.sdk === 'v1' ? await client.callTool(params, undefined, options) : await client.callTool(params, options);
    seen.result = result.structuredContent ?? null;
    seen.isError = result.isError ?? false;
  } catch (error) {
    seen.error = text(error);
  }
  return seen;
}

async function step(run) {
  try {
    return { ok: await run() };
  } catch (error) {
    return { error: text(error) };
  }
}

const ENDED = ['completed', 'failed', 'cancelled', 'lost'];

// submit_message, resources/subscribe to its job://, read the job on each update until it ended
async function follow(client, message, updates) {
  const submitted = await client.callTool({ name: 'submit_message', arguments: { message } });
  const uri = `job://${submitted.structuredContent.jobId}`;
  const seen = { uri, statuses: [] };
  const ended = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no update said ${uri} ended in 30 s`)), 30000);
    updates.push(async (updated) => {
      if (updated !== uri) return;
      const job = JSON.parse((await client.readResource({ uri })).contents[0].text);
      seen.statuses.push(job.status);
      if (ENDED.includes(job.status)) {
        clearTimeout(timer);
        resolve(job);
      }
    });
  });
  await client.subscribeResource({ uri });
  seen.job = await ended;
  return seen;
}

async function main() {
  const { Client, StreamableHTTPClientTransport, version, options } = sdk(plan.sdk);
  const out = { sdk: plan.sdk, sdkVersion: version, errors: [], notifications: [] };
  const client = new Client({ name: plan.clientName || `mcp-queue-test-${plan.sdk}`, version: '1.0.0' }, options);
  client.onerror = (error) => out.errors.push(text(error));
  const updates = []; // resources/updated listeners (follow)
  client.fallbackNotificationHandler = async (n) => {
    out.notifications.push({ method: n.method, params: n.params });
    if (n.method === 'notifications/resources/updated') for (const listener of updates) await listener(n.params.uri);
  };
  const transport = new StreamableHTTPClientTransport(new URL(plan.url), { requestInit: { headers: plan.headers || {} } });
  try {
    await client.connect(transport);
    out.protocolVersion = client.getNegotiatedProtocolVersion ? client.getNegotiatedProtocolVersion() : transport.protocolVersion;
    out.sessionId = transport.sessionId ?? null;
    out.server = client.getServerVersion();
    out.capabilities = client.getServerCapabilities();
    out.tools = (await client.listTools()).tools.map((t) => t.name);
    if (out.capabilities && out.capabilities.prompts) out.prompts = (await client.listPrompts()).prompts.map((p) => p.name);
    if (plan.logLevel) out.logLevel = await step(() => client.setLoggingLevel(plan.logLevel));
    if (plan.getPrompt) out.prompt = await step(() => client.getPrompt(plan.getPrompt));
    if (plan.complete) out.completion = await step(() => client.complete(plan.complete));
    out.calls = await Promise.all((plan.messages || []).map((m) => call(client, m)));
    if (plan.completeJobId) {
      const ref = { type: 'ref/resource', uri: 'job://{job_id}' };
      const value = out.calls[0].result.jobId.slice(0, 6);
      out.jobCompletion = await step(() => client.complete({ ref, argument: { name: 'job_id', value } }));
    }
    if (plan.follow) out.follow = await step(() => follow(client, plan.follow, updates));
  } catch (error) {
    out.errors.push(text(error));
  } finally {
    await client.close().catch((error) => out.errors.push(text(error)));
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main();
