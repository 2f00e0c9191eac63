//! Render tests of the injection component.

#[allow(unused_imports)]
use super::{find, render_spec};
