fn main() {
    plugworker_kit_build::declare_algorithms();
}
