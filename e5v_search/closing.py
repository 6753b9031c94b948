"""`with Thing.open(...) as thing:` for the objects that hold files or connections open (the
catalog, the store, the engine): the block's end calls their `close()`."""


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
