// The common calls of ollama-js (npm `ollama`) against the bridge at process.argv[2]; prints one
// JSON object of results for tests/test_clients_ollama_js.py to check. Run from a folder where
// `ollama` is installed (NODE_PATH is not read for ES modules: the test copies this file there).
import { Ollama } from 'ollama'

const o = new Ollama({ host: process.argv[2] })
const tools = [{ type: 'function', function: { name: 'get_weather', description: 'w',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }]
const ask = [{ role: 'user', content: 'What is the weather in Paris?' }]
const out = {}

out.version = (await o.version()).version
out.tags = (await o.list()).models.map((m) => m.name)
out.show = (await o.show({ model: 'tools' })).capabilities
const chat = await o.chat({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }],
  options: { num_predict: 3 } })
out.chat = { done: chat.done, eval_count: chat.eval_count, role: chat.message.role }
const parts = []
for await (const p of await o.generate({ model: 'tiny', prompt: 'hi', stream: true,
  options: { num_predict: 3 } })) parts.push(p)
out.generate_stream = { n: parts.length, last_done: parts.at(-1).done,
  done_reason: parts.at(-1).done_reason }
const call = await o.chat({ model: 'tools', messages: ask, tools })
out.tool_calls = call.message.tool_calls
const answer = await o.chat({ model: 'tools', tools, messages: [...ask, call.message,
  { role: 'tool', content: 'Sunny, 22 C', tool_name: 'get_weather' }] })
out.answer = answer.message.content
const thinking = []
for await (const p of await o.chat({ model: 'think', messages: [{ role: 'user', content: 'hi' }],
  think: true, stream: true })) thinking.push([p.message.thinking ?? '', p.message.content])
out.thinking = thinking.map((t) => t[0]).join('')
out.thought_content = thinking.map((t) => t[1]).join('')
out.embed = (await o.embed({ model: 'tiny', input: ['a', 'b'] })).embeddings.map((e) => e.length)
const stream = await o.chat({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }],
  stream: true, options: { num_predict: 200 } })
let seen = 0
try {
  for await (const _ of stream) if (++seen === 2) stream.abort()
} catch (e) { out.abort = e.name }
out.after_abort = (await o.chat({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }],
  options: { num_predict: 2 } })).done
try { await o.chat({ model: 'nope', messages: ask }) } catch (e) {
  out.missing = { status: e.status_code, error: e.error }
}
console.log(JSON.stringify(out))
