//! Render tests of the cni component.

#[allow(unused_imports)]
use super::{find, render_spec};
