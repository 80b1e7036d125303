//! `sandboxd-init`: PID 1 of a native-backend box while it builds the box; it then becomes
//! the agent. Started only by the native backend; see `sandboxd_backend_native::init`.

fn main() {
    sandboxd_backend_native::init::init_main()
}
