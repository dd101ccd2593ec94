"""Worker-side code: nothing here imports Django, so a worker machine needs only pyzmq and dill."""
