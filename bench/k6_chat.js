// k6 side of bench/load_bench.py: the same users, texts, closed loop and checks as the other generators.
// Run by the bench: k6 run -e SPEC=<spec.json> bench/k6_chat.js  (SPEC: users, ws_url, messages, timeout)
import { WebSocket } from 'k6/experimental/websockets';
import { Counter, Trend } from 'k6/metrics';

const spec = JSON.parse(open(__ENV.SPEC));
const TOPICS = [
  'What will my billing look like next month',
  'Is my password storage secure enough',
  'Why is the dashboard latency so high',
  'Summarise what we discussed',
];
const CANARY_RE = /CANARY-[A-Za-z0-9_-]+/g;
const latency = new Trend('chat_latency', true);
const completed = new Counter('chat_completed');
const errors = new Counter('chat_errors');
const violations = new Counter('chat_violations');

export const options = {
  scenarios: {
    chat: { executor: 'per-vu-iterations', vus: spec.users.length, iterations: 1, maxDuration: '30m' },
  },
};

export default function () {
  const u = spec.users[__VU - 1];
  const ws = new WebSocket(spec.ws_url, null, { headers: { Authorization: `Bearer ${u.token}` } });
  let n = 0;
  let cmid = null;
  let canary = null;
  let sent = 0;
  let seq = 0;
  let timer = null;
  let threadId = null;

  function next() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    if (n >= spec.messages) { console.log('DONE'); ws.close(); return; }
    n += 1;
    cmid = `k6-${u.index}-${n}`;
    canary = `${u.canary}-m${n}`;
    seq = 0;
    const body = { type: 'user_message', content: `${TOPICS[(u.index + n) % TOPICS.length]} [${canary}]`,
      client_message_id: cmid };
    if (threadId) { body.thread_id = threadId; }
    timer = setTimeout(() => { timer = null; errors.add(1); next(); }, spec.timeout * 1000);
    sent = Date.now();
    ws.send(JSON.stringify(body));
  }

  ws.onopen = () => { console.log('GO'); next(); };
  ws.onmessage = (event) => {
    const raw = event.data;
    const data = JSON.parse(raw);
    if (raw.indexOf('CANARY-') >= 0) {
      for (const found of raw.match(CANARY_RE)) {
        if (!found.startsWith(u.canary)) { violations.add(1); }
      }
    }
    if (data.client_message_id !== cmid || data.user_id !== u.user_id) { violations.add(1); return; }
    seq += 1;
    if (data.type === 'error' || data.seq !== seq || data.type === 'agent_error') { errors.add(1); next(); return; }
    if (data.type === 'agent_completed') {
      if (data.payload.response.indexOf(canary) >= 0) {
        latency.add(Date.now() - sent);
        completed.add(1);
      } else {
        errors.add(1);
      }
      threadId = data.thread_id;
      next();
    }
  };
  ws.onerror = (e) => { errors.add(1); console.log(`ws error ${e.error}`); };
}

export function handleSummary(data) {
  const value = (name, key) => (data.metrics[name] ? data.metrics[name].values[key] : 0);
  const result = {
    completed: value('chat_completed', 'count'), errors: value('chat_errors', 'count'),
    violations: value('chat_violations', 'count'), p50_ms: value('chat_latency', 'p(50)'),
    p95_ms: value('chat_latency', 'p(95)'), p99_ms: value('chat_latency', 'p(99)'),
  };
  return { stdout: `RESULT ${JSON.stringify(result)}\n` };
}
