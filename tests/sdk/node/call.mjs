// One call of the official `resend` npm SDK, as an application makes it; run by
// tests/sdk/test_resend_node.py against a running Postline.
//
// The SDK is configured the way its users configure it, from the environment only:
// RESEND_BASE_URL (Postline's http://host:port/v1) and RESEND_API_KEY (a Postline key).
// stdin: {"method": "emails.send", "args": [...]}; stdout: the SDK's answer,
// {"data": ..., "error": ...}, as JSON. The SDK does not throw on an API error: it
// returns it in `error`, which is what the test looks at.
import { Resend } from "resend";

const chunks = [];
for await (const chunk of process.stdin) {
  chunks.push(chunk);
}
const { method, args } = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const resend = new Resend();
const [resource, action] = method.split(".");
const { data, error } = await resend[resource][action](...args);
process.stdout.write(JSON.stringify({ data, error }));
