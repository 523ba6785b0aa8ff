"""Training-framework integrations, each one line:

    from noisescope.integrations.transformers import NoiseScopeCallback   # Trainer(..., callbacks=[NoiseScopeCallback()])
    from noisescope.integrations.lightning import NoiseScopeCallback      # L.Trainer(..., callbacks=[NoiseScopeCallback()])

Importing this package imports neither framework; each module imports its own.
"""
