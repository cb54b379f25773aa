//! Named fault plans shared by the simulator and real-infrastructure runs
