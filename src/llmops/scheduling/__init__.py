"""Which engine serves a request, and when: the model pool, each model's one admission queue, the image
batcher behind it, fan-out of n choices and running admitted work under its deadline."""
