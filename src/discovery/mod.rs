//! Finding what to probe: the kernel functions that match a glob, the functions of a
//! user-space binary or library, library names resolved the way users write them, and the
//! `funccount` pattern syntax.
//!
//! - [`kernel_functions`] lists the text symbols of `/proc/kallsyms` that match a glob,
//!   keeps only those ftrace can trace (tracefs `available_filter_functions`, when it is
//!   readable) and those not on the kprobe blacklist (`/sys/kernel/debug/kprobes/blacklist`,
//!   when debugfs is mounted), and skips names that several functions share: the kernel
//!   refuses a kprobe on an ambiguous name (6.6+, b022f0c7e404).
//! - [`resolve_library`] turns `c`, `libc`, `libc.so.6`, `libssl.so.3` or a path into a
//!   file: through `/proc/PID/maps` when a pid is given, then the dynamic linker's cache
//!   (`/etc/ld.so.cache`), then the standard library directories.
//! - [`user_functions`] lists the functions of that file that match a glob, as uprobes at
//!   their file offsets, skipping IFUNC resolvers and aliases.
//! - [`parse_pattern`] reads `vfs_*` (kernel), `c:str*` or `/path/to/bin:GLOB` (user).
//!
//! The three lookups read files, so they are async and run on tokio's blocking pool; each
//! has a blocking twin for code off the runtime: [`kernel_functions_blocking`],
//! [`resolve_library_blocking`], [`user_functions_blocking`].
//!
//! Each listing comes with what it skipped and why, so a tool can say so.
//!
//! Globs are shell globs: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`, and `\` to quote.
//!
//! # Examples
//!
//! ```no_run
//! # async fn f() -> Result<(), probeset::Error> {
//! use probeset::counter::{Counter, Flavour};
//! use probeset::discovery::{self, Pattern};
//!
//! // Every `str*` function of the C library, as `funccount c:str*` would probe them.
//! let Pattern::User { target, glob } = discovery::parse_pattern("c:str*")? else {
//!     unreachable!()
//! };
//! let found = discovery::user_functions(target, glob, None).await?;
//! println!("{} functions in {}", found.functions.len(), found.binary.display());
//! for (name, reason) in &found.skipped {
//!     println!("skipped {name}: {reason}");
//! }
//!
//! let counter = Counter::load(Flavour::Plain, u32::try_from(found.functions.len()).unwrap())?;
//! let mut links = Vec::new();
//! for (i, function) in found.functions.iter().enumerate() {
//!     links.push(function.probe.clone().cookie(i as u64).attach(&counter).await?);
//! }
//!
//! // A library name, the way users write it.
//! let libc = discovery::resolve_library("c", None).await?;
//! println!("c is {}", libc.display());
//!
//! // Kernel functions are listed the same way (attaching them needs CONFIG_KPROBES).
//! let vfs = discovery::kernel_functions("vfs_*").await?;
//! for function in &vfs.functions {
//!     println!("{}", function.qualified_name());
//! }
//! # Ok(()) }
//! ```

mod kernel;
mod ld_so_cache;
mod library;
mod pattern;
mod user;

#[allow(deprecated)]
pub use kernel::kernel_functions_async;
pub use kernel::{kernel_functions, kernel_functions_blocking, KernelFunction, KernelMatches};
pub use library::{resolve_library, resolve_library_blocking};
pub use pattern::{parse_pattern, Pattern};
#[allow(deprecated)]
pub use user::user_functions_async;
pub use user::{user_functions, user_functions_blocking, UserFunction, UserMatches, IFUNC_REASON};
