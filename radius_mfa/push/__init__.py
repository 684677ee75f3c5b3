"""Push approval: paired devices, the device API, and the waiting requests.

``crypto`` holds what both ends agree on (signed messages, the pairing URL,
the certificate's fingerprint); ``hub`` is the engine's side (start or join a
push, wait for its answer); ``api`` the device API over HTTPS; ``notify`` the
notifiers that wake a device.
"""
