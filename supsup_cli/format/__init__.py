"""The store format's code twin, numpy only (never torch): the header and task records, bit
packing, the mask codecs, the architectures' mask shapes, mask rules and generator constants."""
