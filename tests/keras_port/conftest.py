def pytest_configure(config):
    config.addinivalue_line("markers", "requires_trainable_backend: Keras's marker (kept)")
