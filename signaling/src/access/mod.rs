//! Who may do what: digest authentication of REGISTER and INVITE ([`auth`]), per-source
//! request budgets and password-guessing bans ([`guard`]), and the registrar's bindings of
//! users to where they can be reached ([`registrar`]). All three are pure: the call core
//! feeds them requests and `now`.

pub(crate) mod auth;
pub mod guard;
pub(crate) mod registrar;
