//! A thread of its own with a current-thread tokio runtime, for clients whose sockets and tasks
//! must outlive any one actix worker (the store's pool, the Redis connection).
//!
//! actix runs one current-thread runtime per worker, and a client's sockets and tasks belong to
//! the runtime that made them. A handler on any worker spawns its call on this runtime and
//! awaits the task instead.

use tokio::{runtime::Handle, sync::mpsc};

/// Starts thread `name` with its runtime, which runs until every sender of the returned channel
/// is dropped.
pub fn own_thread(name: &str) -> std::io::Result<(Handle, mpsc::Sender<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (alive, mut gone) = mpsc::channel::<()>(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(async move { while gone.recv().await.is_some() {} }))?;
    Ok((handle, alive))
}
