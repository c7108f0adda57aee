//! Countdown and multiplication: data, prompt templates, TinyZero-exact rewards, solver.
