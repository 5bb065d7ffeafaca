"""General text the forgetting probe scores before and after fine-tuning.

Unrelated to any training set on purpose: if the adapter's loss on these rises far above the
base model's, fine-tuning has damaged general language ability (catastrophic forgetting).
Kept short so the probe costs a few forward passes.
"""

GENERAL_TEXT: tuple[str, ...] = (
    "The sun rises in the east and sets in the west, and the day is longer in summer than in winter.",
    "Water is made of hydrogen and oxygen. It boils at one hundred degrees Celsius at sea level.",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.",
    "To make a cup of tea, boil some water, pour it over the tea leaves and wait a few minutes.",
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Plants need sunlight, water and air to grow, and most of them take nutrients from the soil.",
    "She walked to the station, bought a ticket and waited on the platform for the next train.",
    "A year has twelve months, and most months have thirty or thirty-one days.",
)
