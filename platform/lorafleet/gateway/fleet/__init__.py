"""The fleet: which workers exist, what each holds, where a request goes."""
