"""Vocoders: log-mel -> waveform.

    griffin_lim.py     phase reconstruction, no training; the default
    hifigan.py         HiFi-GAN generator (tensors only; its sizes are config/generators.py)
    discriminators.py  HiFi-GAN multi-period and multi-scale discriminators (tensors only)
    losses.py          HiFi-GAN generator and discriminator losses, every term named
    neural.py          a trained generator behind `Vocoder`, its checkpoint contract, loading
    train.py           `tacotune vocoder train`: the GAN training loop (numbered steps)
    session.py         what one vocoder training process holds: networks, optimizers, data
    evaluate.py        validation: the vocoder and Griffin-Lim against the recordings
    teacher.py         teacher-forced (ground-truth aligned) mels of an acoustic model

The package itself imports nothing: synthesis imports griffin_lim.py and neural.py, and so
never loads the training modules (which import synthesis to find an acoustic model's best
checkpoint).
"""
