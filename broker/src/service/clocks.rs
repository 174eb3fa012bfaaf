//! The operations of simulation clocks (extensions §6): `set_clock`, `pause_clock`, `resume_clock`, `get_clock`, without a transport.
