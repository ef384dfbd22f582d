<?php

declare(strict_types=1);

/*
 * Class loading for both ways of running this app:
 *
 * - installed with Composer (`composer install`, current Laravel): vendor/autoload.php loads
 *   the framework, Guzzle and the App\ namespace (composer.json's psr-4 entry);
 * - on Debian/Ubuntu packages (php-laravel-framework 8.83, php-guzzlehttp-guzzle, php-redis,
 *   php-curl): the packaged autoloaders under /usr/share/php. Laravel's does not load Guzzle
 *   ("Class GuzzleHttp\HandlerStack not found"), so Guzzle's is required here, and App\ is
 *   mapped onto app/ by the small loader below.
 */

$composer = __DIR__ . '/../vendor/autoload.php';
if (is_file($composer)) {
    require $composer;

    return;
}

foreach (['Illuminate/autoload.php', 'GuzzleHttp/autoload.php'] as $packaged) {
    if (stream_resolve_include_path($packaged) === false) {
        fwrite(STDERR, "{$packaged} not found: run `composer install`, or install the Debian packages "
            . "php-laravel-framework php-guzzlehttp-guzzle php-redis php-curl\n");
        exit(1);
    }
    require_once $packaged;
}

spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'App\\')) {
        $file = __DIR__ . '/../app/' . str_replace('\\', '/', substr($class, 4)) . '.php';
        if (is_file($file)) {
            require $file;
        }
    }
});
