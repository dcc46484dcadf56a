// What the tests share: every event of a client, recorded in order.

/** Every event of `client`, in order, as [type, payload]; `of(type)` lists one type's
 * payloads, `texts()` the room messages' texts. */
export function record(client) {
  const seen = [];
  for (const type of ['connecting', 'connected', 'disconnected', 'reconnecting', 'joined', 'left', 'message',
    'private', 'broadcast', 'count', 'members', 'presence', 'refused', 'reset']) {
    client.on(type, (e) => seen.push([type, e]));
  }
  seen.of = (type) => seen.filter(([t]) => t === type).map(([, e]) => e);
  seen.texts = () => seen.of('message').map((m) => m.msg);
  return seen;
}
