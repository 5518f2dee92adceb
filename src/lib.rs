//! soe-uring: the SOE reliable-UDP protocol.
#![deny(unsafe_code)]

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod mux;
pub mod protocol;
#[cfg(target_os = "linux")]
pub mod runtime;
mod send_error;
pub mod session;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(feature = "tokio")]
pub mod tokio_rt;

pub use mux::{ConnectError, MuxStats, RemoteAddr, SocketConfig, SocketEvent, SoeMultiplexer};
pub use protocol::{DisconnectReason, OpCode, Rc4KeyState};
#[cfg(target_os = "linux")]
pub use runtime::{
    ServerError, ServerStats, ShardContext, ShardHandler, ShardInfo, ShardStats, SoeHandle,
    SoeServer, SoeServerBuilder, shard_of,
};
pub use send_error::SendError;
pub use session::{
    ApplicationParameters, Channel, EnqueueError, MultiLength, SessionEvent, SessionIo,
    SessionMode, SessionParameters, SessionState, SessionStats, SoeSession, ZeroEscape,
};
#[cfg(feature = "tokio")]
pub use tokio_rt::{ClientEvent, SoeClientHandle, TokioSoeClient, TokioSoeServer};
