// One call of the official `resend` npm SDK, as an application makes it; run by
// tests/sdk/test_resend_node.py against a running Postline.
//
// The SDK is configured the way its users configure it, from the environment only:
// RESEND_BASE_URL (Postline's http://host:port/v1) and RESEND_API_KEY (a Postline key).
// stdin: {"method": "emails.send", "args": [...]}; stdout, as JSON:
// {"result": <what the method returned>, "thrown": null | <the message of what it threw>}.
// API calls do not throw on an API error: they return {data, error}, and the test
// reads `error`. webhooks.verify throws when a signature does not verify.
import { Resend } from "resend";

const chunks = [];
for await (const chunk of process.stdin) {
  chunks.push(chunk);
}
const { method, args } = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const resend = new Resend();
const [resource, action] = method.split(".");
let answer;
try {
  answer = { result: await resend[resource][action](...args), thrown: null };
} catch (error) {
  answer = { result: null, thrown: String(error?.message ?? error) };
}
process.stdout.write(JSON.stringify(answer));
