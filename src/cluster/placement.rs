//! Room placement in Redis: which node hosts each room (`sfu:room:<name>` holds its node id,
//! with the same TTL as node entries). A room lives on one node; a join that reaches another
//! node is sent there. Each step is one Lua script, so two nodes racing for a room agree.

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script, ScriptInvocation};

/// Key prefixes in Redis.
pub const NODE_KEY: &str = "sfu:node:";
pub const NODES_SET: &str = "sfu:nodes";
pub const ROOM_KEY: &str = "sfu:room:";
pub const CHAT_KEY: &str = "sfu:chat:";

/// Takes the room for this node unless a live node that is not draining holds it. Returns the
/// holder's id and, when that is another node, its entry (JSON).
///
/// KEYS[1] the room key; ARGV: this node's id, the TTL in ms, the node key prefix.
const CLAIM: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  local node = redis.call('GET', ARGV[3] .. owner)
  if node then
    local ok, info = pcall(cjson.decode, node)
    if ok and not info.draining then
      return {owner, node}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], ''}
"#;

/// Renews this node's hold on the room; a room another node took meanwhile is left to it
/// (returns 0). KEYS[1] the room key; ARGV: this node's id, the TTL in ms.
const RENEW: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Lets go of the room if this node holds it. KEYS[1] the room key; ARGV[1] this node's id.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// A room that closed here: lets go of it and ends its chat, both only if this node still
/// holds it (a node that took it meanwhile keeps its chat). KEYS: the room key, the chat key;
/// ARGV[1] this node's id.
const CLOSE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"#;

/// Adds a chat message to the room's stream (capped at ARGV[3] entries, kept ARGV[4] ms after
/// the last), only while this node holds the room: a message that reaches Redis after the room
/// closed here, or after another node took it, must not bring the stream back. KEYS: the room
/// key, the chat key; ARGV: this node's id, the message (JSON), the cap, the time kept.
const KEEP_CHAT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'm', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// Writes this node's entry (KEYS[1], ARGV[1] with a TTL of ARGV[2] ms) and adds its id
/// (ARGV[3]) to the set of nodes (KEYS[2]); returns the entry it replaced, so a node can tell
/// that another process writes under its id.
const ANNOUNCE: &str = r#"
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return previous or ''
"#;

/// Writes a node's entry; returns the one it replaced ("" if none).
pub async fn announce(
    redis: &mut ConnectionManager,
    me: &str,
    entry: &str,
    ttl_ms: u64,
) -> RedisResult<String> {
    Script::new(ANNOUNCE)
        .key(format!("{NODE_KEY}{me}"))
        .key(NODES_SET)
        .arg(entry)
        .arg(ttl_ms)
        .arg(me)
        .invoke_async(redis)
        .await
}

/// Lets go of rooms that closed here and ends their chat, where this node still holds them.
pub async fn close(redis: &mut ConnectionManager, rooms: &[String], me: &str) -> RedisResult<()> {
    if rooms.is_empty() {
        return Ok(());
    }
    let script = Script::new(CLOSE);
    per_room(&script, rooms, |room, invocation| {
        invocation.key(format!("{CHAT_KEY}{room}")).arg(me);
    })
    .query_async::<()>(redis)
    .await
}

/// Adds `message` (JSON) to `room`'s chat stream if this node holds the room; returns whether
/// it did.
pub async fn keep_chat(
    redis: &mut ConnectionManager,
    room: &str,
    me: &str,
    message: &str,
    history: usize,
    kept_ms: u64,
) -> RedisResult<bool> {
    Script::new(KEEP_CHAT)
        .key(format!("{ROOM_KEY}{room}"))
        .key(format!("{CHAT_KEY}{room}"))
        .arg(me)
        .arg(message)
        .arg(history)
        .arg(kept_ms)
        .invoke_async(redis)
        .await
}

/// One pipeline that runs `script` once per room: its room key first, then what `rest` adds.
fn per_room<'a>(
    script: &'a Script,
    rooms: &[String],
    rest: impl Fn(&str, &mut ScriptInvocation<'a>),
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.load_script(script).ignore();
    for room in rooms {
        let mut invocation = script.key(format!("{ROOM_KEY}{room}"));
        rest(room, &mut invocation);
        pipe.invoke_script(&invocation);
    }
    pipe
}

/// Who hosts a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This node (it has just taken the room, or held it already).
    Here,
    /// Another live node; its entry as it wrote it.
    Elsewhere { node: String, entry: String },
}

pub async fn claim(
    redis: &mut ConnectionManager,
    room: &str,
    me: &str,
    ttl_ms: u64,
) -> RedisResult<Holder> {
    let (owner, entry): (String, String) = Script::new(CLAIM)
        .key(format!("{ROOM_KEY}{room}"))
        .arg(me)
        .arg(ttl_ms)
        .arg(NODE_KEY)
        .invoke_async(redis)
        .await?;
    Ok(if owner == me {
        Holder::Here
    } else {
        Holder::Elsewhere { node: owner, entry }
    })
}

/// Renews every room in `rooms` in one round trip; returns those another node holds now.
pub async fn renew(
    redis: &mut ConnectionManager,
    rooms: &[String],
    me: &str,
    ttl_ms: u64,
) -> RedisResult<Vec<String>> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let script = Script::new(RENEW);
    let held: Vec<i64> = per_room(&script, rooms, |_, invocation| {
        invocation.arg(me).arg(ttl_ms);
    })
    .query_async(redis)
    .await?;
    Ok(rooms
        .iter()
        .zip(held)
        .filter(|(_, held)| *held == 0)
        .map(|(room, _)| room.clone())
        .collect())
}

pub async fn release(redis: &mut ConnectionManager, rooms: &[String], me: &str) -> RedisResult<()> {
    if rooms.is_empty() {
        return Ok(());
    }
    let script = Script::new(RELEASE);
    per_room(&script, rooms, |_, invocation| {
        invocation.arg(me);
    })
    .query_async::<()>(redis)
    .await
}
