// A minimal event emitter (no dependency on Node's events or the DOM's EventTarget).

export class Emitter {
    constructor() {
        this._handlers = new Map();
    }

    // on(name, fn) -> a function that removes the handler again
    on(name, fn) {
        let list = this._handlers.get(name);
        if (!list) {
            list = [];
            this._handlers.set(name, list);
        }
        list.push(fn);
        return () => this.off(name, fn);
    }

    once(name, fn) {
        const off = this.on(name, (arg) => {
            off();
            fn(arg);
        });
        return off;
    }

    off(name, fn) {
        const list = this._handlers.get(name);
        if (list) {
            const i = list.indexOf(fn);
            if (i >= 0) {
                list.splice(i, 1);
            }
        }
        return this;
    }

    // a throwing handler neither stops the others nor the client: it is rethrown later
    emit(name, arg) {
        const list = this._handlers.get(name);
        if (!list) {
            return;
        }
        for (const fn of list.slice()) {
            try {
                fn.call(this, arg);
            } catch (e) {
                setTimeout(() => { throw e; });
            }
        }
    }
}
