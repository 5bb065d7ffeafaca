"""How loraplane holds up: fuzzing, faults and sustained load, as one JSON summary."""
