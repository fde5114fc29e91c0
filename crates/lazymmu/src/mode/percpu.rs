//! The per-CPU design: the state lives with the CPU, so a section runs with
//! preemption off and cannot sleep.
